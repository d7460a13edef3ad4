"""The README's main job: `arrival demo` follows the sample file to a champion, and `arrival status
--json` then reports the endpoints and the champion. Run against the session's cloud and training
stack (what `make demo` deploys as `arrival`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from localcloud.settings import get_local_cloud_settings
from tests.conftest import TRAINING_STACK, LocalCloud

pytestmark = pytest.mark.e2e


@pytest.mark.usefixtures("training_stack")
def test_the_demo_reaches_a_champion_and_status_reports_it(
    local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = local_cloud.settings
    demo = CliRunner().invoke(app, ["demo", "--stack-name", TRAINING_STACK])

    assert demo.exit_code == 0, demo.output
    printed = " ".join(demo.output.split())  # the console wraps long lines at spaces
    stages = ["ingest Lambda: valid against the contract", "trainer i-", "MLflow run", "registered; gate:"]
    for stage in stages:
        assert stage in printed
    assert "champion of 'iris': version" in printed
    summary = json.loads(demo.output[demo.output.index("\n{") + 1 :])
    assert summary["mlflow_ui"] == f"{settings.mlflow_url}/#/models/iris"
    assert summary["metrics"]["f1_macro"] > 0.8

    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("ARRIVAL_AWS_PORT", str(settings.aws_port))
    monkeypatch.setenv("ARRIVAL_MLFLOW_PORT", str(settings.mlflow_port))
    get_local_cloud_settings.cache_clear()
    try:
        status = CliRunner().invoke(app, ["status", "--json"])
    finally:
        get_local_cloud_settings.cache_clear()

    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["endpoints"]["aws"] == settings.aws_endpoint_url
    assert report["endpoints"]["mlflow"] == settings.mlflow_url
    iris = next(model for model in report["models"] if model["name"] == "iris")
    assert iris["champion"] == summary["champion"]
