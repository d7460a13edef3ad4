"""The README's main job: `arrival demo` follows the sample file to a champion, and `arrival status
--json` then reports the endpoints and the champion. Run against the session's cloud and training
stack (what `make demo` deploys as `arrival`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from localcloud.settings import get_local_cloud_settings
from tests.conftest import TRAINING_STACK, LocalCloud

pytestmark = pytest.mark.e2e


def _demo_summaries(output: str) -> list[dict[str, Any]]:
    """The JSON blocks the demo prints after each month's champion."""
    summaries, start = [], output.find("\n{")
    while start >= 0:
        end = output.index("\n}", start + 1) + 2
        summaries.append(json.loads(output[start + 1 : end]))
        start = output.find("\n{", end)
    return summaries


@pytest.mark.usefixtures("training_stack")
def test_the_demo_reaches_a_served_prediction_twice_and_status_reports_it(
    local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the CLI pointed at this session's local cloud, as `make demo` points it at its own
    settings = local_cloud.settings
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("ARRIVAL_AWS_PORT", str(settings.aws_port))
    monkeypatch.setenv("ARRIVAL_MLFLOW_PORT", str(settings.mlflow_port))
    monkeypatch.setenv("ARRIVAL_API_PORT", str(settings.api_port))
    get_local_cloud_settings.cache_clear()
    try:
        # WHEN the demo runs, and then runs again on the same running stack
        first = CliRunner().invoke(app, ["demo", "--stack-name", TRAINING_STACK])
        second = CliRunner().invoke(app, ["demo", "--stack-name", TRAINING_STACK])
        status = CliRunner().invoke(app, ["status", "--json", "--stack-name", TRAINING_STACK])
    finally:
        get_local_cloud_settings.cache_clear()

    # THEN the first follows each month's file through every stage to a prediction from serving
    assert first.exit_code == 0, first.output
    printed = " ".join(first.output.split())  # the console wraps long lines at spaces
    stages = ["ingest Lambda: valid against the contract", "trainer i-", "MLflow run", "registered; gate:"]
    for stage in stages:
        assert printed.count(stage) == 2, stage
    october, november = _demo_summaries(first.output)
    assert printed.count("gate: promoted") == 2
    # AND the later, larger month's version beats the first, and serving switches to it
    assert int(november["champion"]) == int(october["champion"]) + 1
    assert f"the champion moved from version {october['champion']} to {november['champion']}" in printed
    assert "gate: promoted: f1_macro" in printed and "beats champion" in printed
    assert november["mlflow_ui"] == f"{settings.mlflow_url}/#/models/iris"
    api = f"http://127.0.0.1:{settings.api_port}"
    for summary in (october, november):
        assert f"prediction from version {summary['champion']}:" in printed
    # AND it ends with where to look and what to run next
    assert f"curl -s -X POST {api}/models/iris/predict" in printed
    assert f"API schema: curl -s {api}/openapi.json -H 'x-api-key: " in printed
    assert f"MLflow UI: {settings.mlflow_url}/#/models/iris" in printed
    assert "uv run arrival status" in printed and "uv run arrival logs trainer" in printed

    # AND the second recognises both samples as already accepted and still ends with a prediction
    assert second.exit_code == 0, second.output
    again = " ".join(second.output.split())
    assert again.count("ingest drops the copy") == 2
    assert f"prediction from version {november['champion']}:" in again
    assert "the champion moved" not in again

    # AND status reports the endpoints, the champion and the version serving answers with
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["endpoints"]["aws"] == settings.aws_endpoint_url
    assert report["endpoints"]["mlflow"] == settings.mlflow_url
    assert report["endpoints"]["api"] == api
    iris = next(model for model in report["stack"]["models"] if model["name"] == "iris")
    assert iris["champion"] == iris["serving"]["pointer"] == iris["serving"]["api"] == november["champion"]
    assert iris["datasets"]["accepted"] == 2
    assert iris["versions"][0]["decision"] == "promoted"
    assert "champion" in iris["versions"][0]["aliases"]
    assert iris["problems"] == []
