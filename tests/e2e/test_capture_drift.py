"""Data capture and the scheduled drift report end to end: the stack's serving instance captures the
requests of a model whose contract asks for every one, to the capture bucket; the drift function,
invoked through LocalStack as its schedule invokes it, compares that traffic with the champion's
training data, writes the report, and publishes DriftDetected for the shifted columns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from botocore.config import Config

from common.drift import DriftReport
from tests import datasets
from tests.conftest import TRAINING_STACK, LocalCloud
from tests.e2e.conftest import Chain, arrival
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SHIFTED = ["petal_length", "petal_width"]
SCHEDULED_EVENT = Path(__file__).resolve().parents[2] / "events" / "reconcile_schedule.json"


def _contract_capturing_everything(model: str) -> bytes:
    document = yaml.safe_load(datasets.contract_yaml("iris", model))
    document["monitoring"] = {"sample_rate": 1.0}
    return yaml.safe_dump(document).encode()


def _shifted_records(rows: int, seed: int) -> list[dict[str, Any]]:
    """Traffic like the training data, but for two columns moved by about four standard deviations."""
    frame = datasets.noisy_iris_frame(rows, seed, noise=0.2)
    frame["petal_length"] += 7.0
    frame["petal_width"] += 3.0
    return [
        {str(name): float(value) for name, value in row.items()} for row in frame[FEATURES].to_dict("records")
    ]


def _captured(chain: Chain, model: str) -> list[dict[str, Any]]:
    bucket = chain.outputs["CaptureBucketName"]
    listed = chain.s3.list_objects_v2(Bucket=bucket, Prefix=f"{model}/capture/").get("Contents", [])
    lines = []
    for entry in listed:
        body = chain.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        lines += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return lines


def _object(chain: Chain, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body: bytes = chain.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_captured_traffic_feeds_the_scheduled_drift_report(
    chain: Chain, api: httpx.Client, local_cloud: LocalCloud, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a champion whose contract captures every request, served by the stack's instance
    model = f"capture-{unique}"
    chain.put_contract(model, _contract_capturing_everything(model))
    chain.upload(f"{model}/train.csv", datasets.noisy_iris_csv(800, seed=3, noise=0.2))
    version = chain.wait_versions(model, 1)[0].version
    assert chain.champion(model) == version
    eventually(
        lambda: api.get(f"/models/{model}").status_code == 200, 60, what="the serving instance serving it"
    )

    # WHEN clients send traffic whose petals are far larger than any the model was trained on
    records = _shifted_records(1000, seed=9)
    for start in range(0, len(records), 250):
        answer = api.post(f"/models/{model}/predict", json={"records": records[start : start + 250]})
        assert answer.status_code == 200, answer.text
    one = api.post(f"/models/{model}/predict", json=records[0], headers={"x-request-id": f"req-{unique}"})
    assert one.status_code == 200

    # THEN every request, with its records' predictions and version, reaches the capture bucket on
    # its own: a line per request, its id once
    def all_captured() -> list[dict[str, Any]] | None:
        found = _captured(chain, model)
        return found if sum(len(line["inputs"]) for line in found) >= len(records) + 1 else None

    captured = eventually(all_captured, 60, what="1,001 captured records")
    assert sorted(len(line["inputs"]) for line in captured) == [1, 250, 250, 250, 250]
    assert {line["version"] for line in captured} == {version}
    (single,) = [line for line in captured if line["request_id"] == f"req-{unique}"]
    assert (single["inputs"], single["predictions"]) == ([records[0]], [one.json()["prediction"]])
    (probabilities,) = single["probabilities"]
    assert dict(zip(single["classes"], probabilities, strict=True)) == pytest.approx(
        one.json()["probabilities"]
    )

    # AND the same app on Lambda has written its capture by the time it answers (no thread to wait for)
    lambda_api = f"{local_cloud.endpoint_url}/_aws/execute-api/{chain.outputs['ServingApiId']}/Prod"

    def answered_by_lambda() -> httpx.Response | None:
        url, headers = (
            f"{lambda_api}/models/{model}/predict",
            {"x-request-id": f"lambda-{unique}", "x-api-key": chain.api_key()},
        )
        response = httpx.post(url, json=records[1], headers=headers, timeout=60)
        return response if response.status_code == 200 else None  # 503 until its store has loaded

    via_lambda = eventually(answered_by_lambda, 60, what="the Lambda API answering")
    (from_lambda,) = [line for line in _captured(chain, model) if line["request_id"] == f"lambda-{unique}"]
    assert from_lambda["predictions"] == [via_lambda.json()["prediction"]]

    # WHEN the drift function runs as its schedule runs it (EventBridge's scheduled event)
    client = local_cloud.session.client(
        "lambda", config=Config(read_timeout=330, retries={"max_attempts": 0})
    )
    invoked = client.invoke(
        FunctionName=chain.outputs["DriftFunctionName"], Payload=SCHEDULED_EVENT.read_bytes()
    )
    result = json.loads(invoked["Payload"].read())
    assert "FunctionError" not in invoked, result

    # THEN the report on this model's traffic flags the two shifted columns, and only those
    (outcome,) = [entry for entry in result["models"] if entry["model"] == model]
    # every record captured: the instance's 1,001 and the Lambda's one
    assert (outcome["status"], outcome["version"], outcome["rows"]) == ("drifted", version, 1002), outcome
    assert sorted(outcome["drifted_columns"]) == SHIFTED
    report = DriftReport.from_json(_object(chain, outcome["summary"]))
    assert sorted(report.drifted_columns) == SHIFTED
    assert report.context["kind"] == "live_traffic"
    assert b"petal_length" in _object(chain, outcome["report"])
    latest = json.loads(_object(chain, f"s3://{chain.outputs['ModelsBucketName']}/{model}/drift/latest.json"))
    assert (latest["report"], latest["summary"], latest["version"]) == (
        outcome["report"],
        outcome["summary"],
        version,
    )
    # AND DriftDetected went to the bus, for live traffic, naming the columns and the report
    detected = eventually(lambda: chain.events.of(("DriftDetected", model)), 30, what="DriftDetected")
    detail = detected[0]["body"]["detail"]
    assert (detail["kind"], detail["version"], detail["report"]) == (
        "live_traffic",
        version,
        outcome["report"],
    )
    assert sorted(detail["drifted_columns"]) == SHIFTED

    # AND `arrival status` shows the live drift, with the command to look closer
    shown = arrival(local_cloud, monkeypatch, "status", "--json", "--stack-name", TRAINING_STACK)
    assert shown.exit_code == 0, shown.output
    (status,) = [entry for entry in json.loads(shown.output)["stack"]["models"] if entry["name"] == model]
    assert status["live_drift"]["version"] == version
    assert sorted(status["live_drift"]["drifted_columns"]) == SHIFTED
    assert any(f"arrival drift --model {model}" in problem for problem in status["problems"])

    # AND `arrival drift --now` runs the same report on demand, without the AWS CLI, then shows it
    on_demand = arrival(
        local_cloud, monkeypatch, "drift", "--model", model, "--now", "--stack-name", TRAINING_STACK
    )
    assert on_demand.exit_code == 0, on_demand.output
    assert "live report run now: drifted" in on_demand.output
    assert "petal_length" in on_demand.output
