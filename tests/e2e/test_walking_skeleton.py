"""The event chain's skeleton: S3 -> SQS -> ingest Lambda (run by LocalStack) -> S3."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LocalCloud
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_a_csv_put_in_the_raw_bucket_is_ingested_by_the_lambda(
    local_cloud: LocalCloud, arrival_stack: dict[str, str], unique: str
) -> None:
    s3 = local_cloud.client("s3")
    key = f"skeleton-{unique}/iris data.csv"  # a space, so the key arrives URL-encoded

    # WHEN a CSV lands in the raw bucket
    put = s3.put_object(Bucket=arrival_stack["RawBucketName"], Key=key, Body=b"a,b\n1,2\n")

    # THEN the ingest function, invoked by LocalStack, writes its receipt to the processed bucket
    def receipt() -> dict[str, object] | None:
        try:
            body = s3.get_object(Bucket=arrival_stack["ProcessedBucketName"], Key=f"receipts/{key}.json")
        except s3.exceptions.NoSuchKey:
            return None
        document: dict[str, object] = json.loads(body["Body"].read())
        return document

    document = eventually(receipt, timeout=120, what="the ingest receipt")
    assert document["key"] == key
    assert document["version_id"] == put["VersionId"]
    assert document["size"] == 8

    # AND the handler's structured log line is in CloudWatch Logs
    logs = local_cloud.client("logs")
    group = f"/aws/lambda/{arrival_stack['IngestFunctionName']}"

    def ingested_lines() -> list[dict[str, object]]:
        events = logs.filter_log_events(logGroupName=group).get("events", [])
        lines = [json.loads(e["message"]) for e in events if e["message"].startswith("{")]
        return [
            line for line in lines if line.get("message") == "ingested" and key in str(line.get("source"))
        ]

    line = eventually(ingested_lines, timeout=30, what="the ingest log line")[0]
    assert line["level"] == "INFO"
    assert line["function_name"] == arrival_stack["IngestFunctionName"]
