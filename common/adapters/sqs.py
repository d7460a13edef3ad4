"""The only place arrival's Lambda code touches SQS."""

from __future__ import annotations

import json
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
    """Messages waiting or in flight: work that a trainer has still to finish."""
    attributes = sqs_client().get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
        attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
    )
