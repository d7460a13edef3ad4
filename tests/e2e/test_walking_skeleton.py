"""The event chain's spine: S3 -> SQS -> ingest Lambda, executed by LocalStack through arrival's
process executor (never called in-process), with its log line in CloudWatch Logs."""

from __future__ import annotations

import json

import pytest

from tests import datasets
from tests.e2e.conftest import Pipeline
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_a_csv_put_in_the_raw_bucket_is_handled_by_the_lambda_and_logged(
    pipeline: Pipeline, unique: str
) -> None:
    model = f"spine-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    key = f"{model}/iris data.csv"  # a space, so the key arrives URL-encoded

    pipeline.upload(key, datasets.to_csv(datasets.iris_frame(40)))

    assert pipeline.wait_accepted(model, 1)["datasets"][0]["source"]["key"] == key
    logs = pipeline.cloud.client("logs")
    group = f"/aws/lambda/{pipeline.outputs['IngestFunctionName']}"

    def accepted_lines() -> list[dict[str, object]]:
        events = logs.filter_log_events(logGroupName=group).get("events", [])
        lines = [json.loads(event["message"]) for event in events if event["message"].startswith("{")]
        return [
            line for line in lines if line.get("message") == "dataset accepted" and line.get("model") == model
        ]

    line = eventually(accepted_lines, timeout=30, what="the handler's log line")[0]
    assert line["level"] == "INFO"
    assert line["correlation_id"] == f"s3://{pipeline.outputs['RawBucketName']}/{key}"
    assert line["function_name"] == pipeline.outputs["IngestFunctionName"]
