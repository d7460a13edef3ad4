"""SNS subscriptions: a serving instance's reload queue on its stack's reload topic (serving/reload.py).
The notifier's publishing is common/adapters/notify.py's."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient


@cache
def sns_client() -> SNSClient:
    return boto3.client("sns")


def subscribe_queue(topic_arn: str, queue_arn: str) -> str:
    """The subscription's ARN. SNS answers an existing subscription of the same queue with the same
    attributes with its ARN, so this is safe to call again. Raw delivery: the queue receives the
    event itself, not SNS's envelope around it."""
    response = sns_client().subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )
    return response["SubscriptionArn"]


def unsubscribe(subscription_arn: str) -> None:
    sns_client().unsubscribe(SubscriptionArn=subscription_arn)
