"""A file the ingest function cannot handle (here: its model's contract in the bucket is broken)
is retried, and on its last delivery lands in the dead-letter queue with the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers import handle_ingest
from tests import datasets
from tests.unit.conftest import FakeLambdaContext
from tests.unit.test_handle_ingest import RAW, FakeStack, _upload
from tests.unit.test_handle_ingest import stack as stack  # the fixture


def _delivered(event: dict[str, Any], times: int) -> dict[str, Any]:
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = str(times)
    return event


@pytest.fixture
def dead_letters(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = stack.sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    monkeypatch.setenv("INGEST_DEAD_LETTER_QUEUE_URL", url)
    monkeypatch.setenv("INGEST_MAX_RECEIVE_COUNT", "3")
    stack.s3.put_object(Bucket="unit-config", Key="contracts/iris.yaml", Body=b"model: iris\ntask: [oops")
    return url


def test_a_failing_file_is_retried_then_dead_lettered_with_its_reason(
    stack: FakeStack,
    dead_letters: str,
    lambda_context: FakeLambdaContext,
) -> None:
    event = _upload(stack, "iris/month.csv", datasets.to_csv(datasets.iris_frame(50)))

    first = handle_ingest.handler(_delivered(event, 1), lambda_context)
    assert len(first["batchItemFailures"]) == 1  # delivered again later
    assert not stack.sqs.receive_message(QueueUrl=dead_letters).get("Messages")

    last = handle_ingest.handler(_delivered(event, 3), lambda_context)
    assert last["batchItemFailures"] == []  # handled: it is in the dead-letter queue now
    message = stack.sqs.receive_message(QueueUrl=dead_letters, MessageAttributeNames=["All"])["Messages"][0]
    reason = message["MessageAttributes"]["failure_reason"]["StringValue"]
    assert "contracts/iris.yaml" in reason and "arrival redrive ingest" in reason, reason
    assert json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"] == "iris/month.csv"
    assert stack.s3.list_object_versions(Bucket=RAW)["Versions"]  # the file itself stays where it was
