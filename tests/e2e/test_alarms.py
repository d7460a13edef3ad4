"""Alarms end to end: a dead letter on the deployed stack raises its CloudWatch alarm, which LocalStack
evaluates from the metrics its SQS reports, and the alarm's message, with what to run, reaches a
subscriber of the notification topic, as it would reach a person's email on AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Pipeline
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

# SQS reports its queues every 10 s and the test stack's alarms evaluate every 10 s
# (AlarmPeriodSeconds): about 20 s at worst from the dead letter to the alarm, with room for a busy machine.
ALARM_TIMEOUT = 90


@pytest.fixture
def subscriber(pipeline: Pipeline, unique: str) -> Iterator[str]:
    """A queue subscribed to the stack's notification topic: the URL to read its messages from."""
    sqs, sns = pipeline.sqs, pipeline.cloud.client("sns")
    topic = pipeline.outputs["NotificationTopicArn"]
    queue_url: str = sqs.create_queue(QueueName=f"alarm-subscriber-{unique}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    # As on AWS, where SNS delivers to a queue only if the queue's policy lets the topic send.
    from_the_topic = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(from_the_topic)})
    subscription = sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True
    )["SubscriptionArn"]
    try:
        yield queue_url
    finally:
        sns.unsubscribe(SubscriptionArn=subscription)
        sqs.delete_queue(QueueUrl=queue_url)


def _alarm_state(pipeline: Pipeline, alarm_name: str) -> str:
    (alarm,) = pipeline.cloud.client("cloudwatch").describe_alarms(AlarmNames=[alarm_name])["MetricAlarms"]
    return str(alarm["StateValue"])


def _alarm_message(pipeline: Pipeline, queue_url: str, alarm_name: str, state: str) -> dict[str, Any]:
    """The alarm's message once it reaches the subscriber: SNS's envelope, with CloudWatch's JSON
    in its Message."""

    def arrived() -> dict[str, Any] | None:
        for message in pipeline.sqs.receive_message(
            QueueUrl=queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=10
        ).get("Messages", []):
            envelope: dict[str, Any] = json.loads(message["Body"])
            # The topic also carries the pipeline's own notifications (plain text): not this one's.
            if not envelope["Message"].startswith("{"):
                continue
            alarm = json.loads(envelope["Message"])
            if alarm.get("AlarmName") == alarm_name and alarm.get("NewStateValue") == state:
                return {**envelope, "Message": alarm}
        return None

    return eventually(arrived, ALARM_TIMEOUT, interval=0, what=f"the {state} message of {alarm_name}")


def _take_back(pipeline: Pipeline, queue_url: str, marker: str) -> None:
    """Delete the test's own dead letter (and no other), leaving the queue as it was found."""

    def deleted() -> bool:
        for message in pipeline.sqs.receive_message(
            QueueUrl=queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10, VisibilityTimeout=5
        ).get("Messages", []):
            if marker in message["Body"]:
                pipeline.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return True
        return False

    eventually(deleted, 30, interval=0, what="the test's dead letter back")


def test_a_dead_letter_raises_its_alarm_and_the_subscriber_is_told_what_to_run(
    pipeline: Pipeline, subscriber: str, unique: str
) -> None:
    # GIVEN the stack's batch dead-letter queue, which no other test fills, and its alarm not firing
    stack = pipeline.outputs["StackName"]
    alarm_name = f"{stack}-batch-dead-letters"
    dead_letters = pipeline.outputs["BatchDeadLetterQueueUrl"]
    assert _alarm_state(pipeline, alarm_name) != "ALARM", "the batch dead-letter queue was not empty"

    # WHEN a file to score lands in it, as the batch function leaves one it could not score
    marker = f"alarm-{unique}"
    pipeline.sqs.send_message(
        QueueUrl=dead_letters, MessageBody=json.dumps({"test": marker, "failure_reason": "unreadable"})
    )
    try:
        # THEN its alarm fires
        eventually(
            lambda: _alarm_state(pipeline, alarm_name) == "ALARM",
            ALARM_TIMEOUT,
            interval=1,
            what=f"{alarm_name} in ALARM",
        )

        # AND the subscriber hears of it, with the commands that deal with it, for this stack
        envelope = _alarm_message(pipeline, subscriber, alarm_name, "ALARM")
    finally:
        _take_back(pipeline, dead_letters, marker)
    assert envelope["Subject"].startswith(f'ALARM: "{alarm_name}"')
    description = envelope["Message"]["AlarmDescription"]
    assert f"arrival status --stack-name {stack}" in description
    assert f"arrival redrive batch --stack-name {stack}" in description
