"""The ingest handler in-process, against moto: parsing, URL-decoding, partial batch failures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from common.adapters.s3 import s3_client
from common.settings import get_ingest_settings
from handlers import handle_ingest
from tests.unit.conftest import FakeLambdaContext, load_event

RAW = "arrival-raw-000000000000-us-east-1"
PROCESSED = "processed"


@pytest.fixture
def buckets(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("PROCESSED_BUCKET", PROCESSED)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Arrival")
    get_ingest_settings.cache_clear()
    s3_client.cache_clear()
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=RAW)
        s3.create_bucket(Bucket=PROCESSED)
        yield s3
    s3_client.cache_clear()
    get_ingest_settings.cache_clear()


def test_an_object_is_ingested_under_its_decoded_key(buckets, lambda_context: FakeLambdaContext) -> None:  # type: ignore[no-untyped-def]
    # GIVEN an object whose key has a space, which S3 notifications send as '+'
    buckets.put_object(Bucket=RAW, Key="iris/iris data.csv", Body=b"a,b\n1,2\n")
    event = load_event("ingest_sqs_s3_object_created")

    # WHEN the handler gets the batch (one S3 record and one s3:TestEvent)
    response = handle_ingest.handler(event, lambda_context)

    # THEN nothing failed, and the receipt names the decoded key
    assert response == {"batchItemFailures": []}
    receipt = json.loads(
        buckets.get_object(Bucket=PROCESSED, Key="receipts/iris/iris data.csv.json")["Body"].read()
    )
    assert receipt["key"] == "iris/iris data.csv"
    assert receipt["size"] == 8


def test_a_record_that_fails_is_reported_alone(buckets, lambda_context: FakeLambdaContext) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a notification for an object that does not exist
    event = load_event("ingest_sqs_s3_object_created")

    response = handle_ingest.handler(event, lambda_context)

    # THEN only that record is returned for retry; the test event is not
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
