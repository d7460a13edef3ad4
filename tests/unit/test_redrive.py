"""`arrival redrive`'s move, against moto: every dead-lettered message goes back, once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from common.adapters import sqs


@pytest.fixture
def client(aws_credentials: None) -> Iterator[Any]:
    sqs.sqs_client.cache_clear()
    with mock_aws():
        yield boto3.client("sqs")
    sqs.sqs_client.cache_clear()


def _bodies(client: Any, queue_url: str) -> list[str]:
    found: list[str] = []
    while messages := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        found.extend(message["Body"] for message in messages)
    return sorted(found)


def test_every_dead_lettered_file_goes_back_once_without_its_old_reason(client: Any) -> None:
    dead = client.create_queue(QueueName="dlq")["QueueUrl"]
    queue = client.create_queue(QueueName="ingest")["QueueUrl"]
    bodies = [json.dumps({"Records": [{"n": index}]}) for index in range(25)]
    for body in bodies:
        client.send_message(
            QueueUrl=dead,
            MessageBody=body,
            MessageAttributes={"failure_reason": {"DataType": "String", "StringValue": "boom"}},
        )

    assert sqs.move_all(dead, queue) == 25
    assert sqs.move_all(dead, queue) == 0  # safe to run twice
    moved = client.receive_message(QueueUrl=queue, MessageAttributeNames=["All"])["Messages"][0]
    assert "failure_reason" not in moved.get("MessageAttributes", {})
    client.change_message_visibility(
        QueueUrl=queue, ReceiptHandle=moved["ReceiptHandle"], VisibilityTimeout=0
    )
    assert _bodies(client, queue) == sorted(bodies)


def test_training_jobs_go_back_to_the_fifo_queue_under_their_model(client: Any) -> None:
    fifo = {"FifoQueue": "true"}
    dead = client.create_queue(QueueName="jobs-dlq.fifo", Attributes=fifo)["QueueUrl"]
    queue = client.create_queue(QueueName="jobs.fifo", Attributes=fifo)["QueueUrl"]
    for model in ("iris", "houses"):
        # The queue saw this deduplication id moments ago: the copy must not be dropped as a duplicate.
        client.send_message(
            QueueUrl=dead,
            MessageBody=json.dumps({"model": model}),
            MessageGroupId=model,
            MessageDeduplicationId=model,
        )
        client.send_message(
            QueueUrl=queue, MessageBody="{}", MessageGroupId="other", MessageDeduplicationId=model
        )

    assert sqs.move_all(dead, queue, fifo_group=lambda body: json.loads(body)["model"]) == 2
    messages = client.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    groups = sorted(message["Attributes"]["MessageGroupId"] for message in messages["Messages"])
    assert groups.count("iris") == 1 and groups.count("houses") == 1


def test_kept_notifications_go_to_the_notifier_again_and_one_that_fails_stops_the_redrive_keeping_the_rest(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import operations, redrive
    from common.adapters import functions

    dead = client.create_queue(QueueName="notify-dlq")["QueueUrl"]
    for name in ("a", "b", "still-broken", "c"):
        client.send_message(QueueUrl=dead, MessageBody=json.dumps({"detail": {"name": name}}))
    sent: list[str] = []

    def notifier(function_name: str, event: dict[str, Any]) -> None:
        assert function_name == "notify"
        if event["detail"]["name"] == "still-broken":
            raise functions.FunctionFailedError("NotFoundException: Topic does not exist")
        sent.append(event["detail"]["name"])

    monkeypatch.setattr(functions, "invoke", notifier)
    with pytest.raises(operations.OperationError, match="Topic does not exist") as stopped:
        redrive._renotify(dead, "notify")
    assert "still in the notify dead-letter queue" in str(stopped.value)
    # What was sent left the queue; what failed, and what came after it in the batch, is still there.
    left = [json.loads(message["Body"])["detail"]["name"] for message in sqs.peek(dead)]
    assert sorted(sent + left) == ["a", "b", "c", "still-broken"]
    assert "still-broken" in left

    # WHEN the cause is fixed, the rest go, and a second run finds nothing
    def fixed_notifier(function_name: str, event: dict[str, Any]) -> None:
        sent.append(event["detail"]["name"])

    monkeypatch.setattr(functions, "invoke", fixed_notifier)
    assert redrive._renotify(dead, "notify") == len(left)
    assert redrive._renotify(dead, "notify") == 0
    assert sorted(sent) == ["a", "b", "c", "still-broken"]


def test_a_kept_message_that_is_not_an_event_stops_the_redrive_in_one_line_and_stays(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import operations, redrive
    from common.adapters import functions

    dead = client.create_queue(QueueName="notify-dlq-garbled")["QueueUrl"]
    client.send_message(QueueUrl=dead, MessageBody="not json")
    monkeypatch.setattr(functions, "invoke", lambda function_name, event: None)
    with pytest.raises(operations.OperationError, match="is not an event"):
        redrive._renotify(dead, "notify")
    assert [message["Body"] for message in sqs.peek(dead)] == ["not json"]
