from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.settings import PipelineSettings
from localcloud.settings import LocalCloudSettings


def test_local_cloud_settings_come_from_arrival_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ARRIVAL_AWS_PORT", "4999")
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))

    settings = LocalCloudSettings()

    assert settings.aws_port == 4999
    assert settings.aws_endpoint_url == "http://127.0.0.1:4999"
    assert settings.state_dir == tmp_path


def test_two_state_directories_mark_their_processes_differently(tmp_path: Path) -> None:
    first = LocalCloudSettings(state_dir=tmp_path / "a")
    second = LocalCloudSettings(state_dir=tmp_path / "b")
    assert first.cloud_id != second.cloud_id


def test_pipeline_settings_name_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCESSED_BUCKET", raising=False)
    with pytest.raises(ValidationError, match="PROCESSED_BUCKET"):
        PipelineSettings()  # type: ignore[call-arg]
