"""The only place arrival's Lambda code touches SQS."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@cache
def sqs_client() -> SQSClient:
    return boto3.client("sqs")


def send_fifo(queue_url: str, body: dict[str, Any], *, group_id: str, deduplication_id: str) -> str:
    response = sqs_client().send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(body, sort_keys=True),
        MessageGroupId=group_id,
        MessageDeduplicationId=deduplication_id,
    )
    return response["MessageId"]


def pending_messages(queue_url: str) -> int:
    """Messages waiting or in flight: work still to be finished (a trainer's jobs, files being ingested)."""
    attributes = sqs_client().get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
        attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


def waiting_messages(queue_url: str) -> int:
    """Messages no consumer has taken yet (SQS's approximate count)."""
    attributes = sqs_client().get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def send_with_attributes(queue_url: str, body: str, attributes: dict[str, str]) -> str:
    response = sqs_client().send_message(
        QueueUrl=queue_url,
        MessageBody=body,
        MessageAttributes={
            name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
        },
    )
    return response["MessageId"]


def receive(
    queue_url: str, *, wait_seconds: int, visibility_seconds: int, max_messages: int = 10
) -> list[dict[str, Any]]:
    response = sqs_client().receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max_messages,
        WaitTimeSeconds=wait_seconds,
        VisibilityTimeout=visibility_seconds,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    return list(response.get("Messages", []))  # type: ignore[arg-type]


def peek(queue_url: str, limit: int = 100) -> list[dict[str, Any]]:
    """Up to `limit` messages, left where they are (visible again at once), for a count by
    content. Only for queues without a redrive policy (dead-letter queues): each look counts as a
    receive, and on a queue that has one enough looks would dead-letter the message."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, limit // 10) + 2):
        batch = receive(queue_url, wait_seconds=0, visibility_seconds=0)
        new = [message for message in batch if message["MessageId"] not in seen]
        if not new:
            break
        seen.update((message["MessageId"], message) for message in new)
        if len(seen) >= limit:
            break
    return list(seen.values())[:limit]


def delete(queue_url: str, receipt_handle: str) -> None:
    sqs_client().delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)


def extend_visibility(queue_url: str, receipt_handle: str, seconds: int) -> None:
    sqs_client().change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
    )


def send_with_reason(queue_url: str, body: str, *, reason: str) -> None:
    sqs_client().send_message(
        QueueUrl=queue_url,
        MessageBody=body,
        # SQS caps a message attribute with the whole message at 256 KiB; a reason needs far less.
        MessageAttributes={"failure_reason": {"DataType": "String", "StringValue": reason[:4000]}},
    )


def send_fifo_with_reason(
    queue_url: str, body: str, *, group_id: str, deduplication_id: str, reason: str
) -> None:
    sqs_client().send_message(
        QueueUrl=queue_url,
        MessageBody=body,
        MessageGroupId=group_id,
        MessageDeduplicationId=deduplication_id,
        MessageAttributes={"failure_reason": {"DataType": "String", "StringValue": reason[:4000]}},
    )


def move_all(source_url: str, destination_url: str, *, fifo_group: Callable[[str], str] | None = None) -> int:
    """Every message of `source_url` sent again to `destination_url`, then deleted from the source;
    returns how many. A message is deleted only once its copy is sent, so a failure half-way
    duplicates at most one message and loses none (the pipeline is idempotent per file and per
    data list). For a FIFO destination, `fifo_group(body)` names the message group, and each copy
    gets a fresh deduplication id: a redriven job must not be taken for the one it replays.

    Not SQS's own StartMessageMoveTask: it runs asynchronously for minutes and a caller cannot say
    which messages it moved."""
    moved = 0
    while True:
        batch = receive(source_url, wait_seconds=1, visibility_seconds=60)
        if not batch:
            return moved
        for message in batch:
            attributes = {
                name: value
                for name, value in message.get("MessageAttributes", {}).items()
                if name != "failure_reason"  # the copy gets a reason of its own if it fails again
            }
            extra: dict[str, Any] = {}
            if fifo_group is not None:
                extra = {
                    "MessageGroupId": fifo_group(message["Body"]),
                    "MessageDeduplicationId": uuid.uuid4().hex,
                }
            sqs_client().send_message(
                QueueUrl=destination_url, MessageBody=message["Body"], MessageAttributes=attributes, **extra
            )
            delete(source_url, message["ReceiptHandle"])
            moved += 1


def ensure_queue(name: str, attributes: dict[str, str]) -> str:
    """The queue's URL, created if it does not exist, with these attributes set either way (CreateQueue
    alone refuses an existing queue whose attributes differ, and would leave an old policy in place)."""
    client = sqs_client()
    queue_url = client.create_queue(QueueName=name)["QueueUrl"]
    client.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)  # type: ignore[arg-type]
    return queue_url


def delete_queue(queue_url: str) -> None:
    sqs_client().delete_queue(QueueUrl=queue_url)
