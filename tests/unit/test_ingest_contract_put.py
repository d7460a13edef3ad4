"""`arrival contract put` refuses a contract whose file name and declared model disagree: the file
name is the model operators upload data under, and ingest looks the contract up by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests import datasets


def test_a_contract_whose_name_is_not_its_model_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cloud pointed at on purpose (nothing listens there: unit tests have no network)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    # GIVEN foo.yaml that declares model iris
    contract = tmp_path / "foo.yaml"
    contract.write_bytes(datasets.contract_yaml("iris", "iris"))

    # WHEN it is put (no stack exists: the refusal must come before any AWS call)
    result = CliRunner().invoke(app, ["contract", "put", str(contract), "--stack-name", "nowhere"])

    # THEN it fails with one line naming both names
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "'foo'" in lines[0]
    assert "'iris'" in lines[0]
