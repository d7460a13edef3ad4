"""The only place arrival's Lambda code publishes to SNS (the notification topic)."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING

import boto3

from common.notifications import Notification

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import MessageAttributeValueTypeDef


@cache
def sns_client() -> SNSClient:
    return boto3.client("sns")


def message_structure(notification: Notification) -> str:
    """One message per protocol (SNS's MessageStructure=json): the text for email, HTTP, SQS and the
    rest; the custom-notification JSON for HTTPS, the protocol AWS Chatbot subscribes with."""
    return json.dumps({"default": notification.text, "https": notification.chatbot_json()})


def attributes(notification: Notification) -> dict[str, MessageAttributeValueTypeDef]:
    """What a subscription's filter policy can select on (e.g. only DatasetQuarantined for one model)."""
    found: dict[str, MessageAttributeValueTypeDef] = {
        "detail_type": {"DataType": "String", "StringValue": notification.detail_type}
    }
    if notification.model:
        found["model"] = {"DataType": "String", "StringValue": notification.model}
    return found


def publish(topic_arn: str, notification: Notification) -> str:
    """Publish, and return SNS's message id. An error propagates: the invocation fails, and Lambda's
    retries and then its on-failure destination keep the event with the reason."""
    response = sns_client().publish(
        TopicArn=topic_arn,
        Subject=notification.subject,
        Message=message_structure(notification),
        MessageStructure="json",
        MessageAttributes=attributes(notification),
    )
    return response["MessageId"]
