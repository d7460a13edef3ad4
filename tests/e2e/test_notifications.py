"""Notifications end to end: events on the deployed stack's bus reach a local HTTP endpoint through the
notification rule, the notify Lambda that LocalStack runs, and LocalStack's SNS, as they would reach a
person's webhook on AWS."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from common.adapters import events
from tests import datasets
from tests.conftest import INGEST_STACK
from tests.e2e.conftest import Pipeline, arrival
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

# A new execution environment of the notify function took 95 s on this 2-core machine under the load
# of several test sessions; warm, a message arrives within a second.
COLD_START = 180


class Receiver:
    """An HTTP endpoint as SNS sees a subscriber: it keeps every POST, and its tests confirm the
    subscription by visiting SubscribeURL, as a real endpoint does."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.posts.append({"headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log on the test's output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/sns"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [post["body"] for post in self.posts if post["body"].get("Type") == message_type]

    def notification(self, detail_type: str, model: str, timeout: float = COLD_START) -> dict[str, Any]:
        """The first notification of this detail-type about this model."""

        def found() -> dict[str, Any] | None:
            for body in self.of_type("Notification"):
                attributes = body.get("MessageAttributes", {})
                if (
                    attributes.get("detail_type", {}).get("Value") == detail_type
                    and attributes.get("model", {}).get("Value") == model
                ):
                    return body
            return None

        return eventually(found, timeout, what=f"a {detail_type} notification for {model}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _subscribe(pipeline: Pipeline, endpoint: Receiver) -> str:
    """Subscribe the endpoint to the stack's topic over HTTP, and confirm it as a real endpoint does."""
    sns = pipeline.cloud.client("sns")
    confirmed_before = len(endpoint.of_type("SubscriptionConfirmation"))
    subscription: str = sns.subscribe(
        TopicArn=pipeline.outputs["NotificationTopicArn"],
        Protocol="http",
        Endpoint=endpoint.url,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    confirmation = eventually(
        lambda: endpoint.of_type("SubscriptionConfirmation")[confirmed_before:],
        60,
        what="SNS's subscription confirmation",
    )[0]
    assert confirmation["TopicArn"] == pipeline.outputs["NotificationTopicArn"]
    httpx.get(confirmation["SubscribeURL"], timeout=10).raise_for_status()
    eventually(
        lambda: (
            sns.get_subscription_attributes(SubscriptionArn=subscription)["Attributes"]["PendingConfirmation"]
            == "false"
        ),
        30,
        what="the subscription to be confirmed",
    )
    return subscription


@pytest.fixture(scope="module")
def endpoint(pipeline: Pipeline) -> Iterator[Receiver]:
    """A local HTTP endpoint, unsubscribed from the stack's topic when the module is done."""
    sns = pipeline.cloud.client("sns")
    local = Receiver()
    try:
        yield local
    finally:
        # A test that deletes the topic (and creates it again) takes its subscriptions with it.
        topic = pipeline.outputs["NotificationTopicArn"]
        for subscription in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]:
            if subscription["Endpoint"] == local.url:
                sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
        local.close()


@pytest.fixture(scope="module")
def receiver(pipeline: Pipeline, endpoint: Receiver) -> Receiver:
    """The endpoint, subscribed to the stack's notification topic over HTTP, and confirmed."""
    _subscribe(pipeline, endpoint)
    return endpoint


def _events(model: str) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """A realistic detail of each event of the chain, about `model`, and what its message must name:
    the model, the version or file, the reason, the command to look closer."""
    raw = f"arrival-ingest-raw-000000000000-us-east-1/{model}"
    inference = f"s3://arrival-ingest-inference/{model}"
    return {
        "ModelPromoted": (
            {
                "name": model,
                "version": "4",
                "metrics": {"f1_macro": 0.959},
                "champion_version": "3",
                "reason": "f1_macro 0.959 beats champion 0.94 by 0.019",
                "run_id": "b1f2c3d4",
                "lineage": [f"s3://{raw}/2026-11.csv?versionId=v1"],
                "lineage_files": 1,
            },
            ["version 4 is the champion", "f1_macro 0.959 beats champion 0.94", "arrival status"],
        ),
        "ModelRejected": (
            {
                "name": model,
                "version": "5",
                "metrics": {"f1_macro": 0.928},
                "champion_version": "4",
                "reason": "improvement -0.031 is not above the margin 0",
                "run_id": "c2a3b4c5",
                "lineage": [f"s3://{raw}/2026-12.csv?versionId=v2"],
                "lineage_files": 2,
            },
            ["version 5 was not promoted", "improvement -0.031", "arrival status"],
        ),
        "TrainingFailed": (
            {
                "name": model,
                "attempts": 2,
                "failure_reason": "UnknownFamilyError: unknown model family 'quantum_forest'",
                "trace": "Traceback (most recent call last): ...",
            },
            [
                "after 2 attempt(s)",
                "unknown model family 'quantum_forest'",
                "arrival logs trainer",
                "arrival redrive training",
            ],
        ),
        "ModelRolledBack": (
            {"name": model, "version": "3", "from_version": "4", "reason": "rolled back from version 4"},
            ["version 3 is the champion", "rolled back from version 4", "arrival status"],
        ),
        "DriftDetected": (
            {
                "name": model,
                "version": "3",
                "kind": "training_data",
                "drifted_columns": ["petal_width"],
                "report": f"s3://arrival-ingest-models/{model}/drift/report.html",
                "summary": f"s3://arrival-ingest-models/{model}/drift/report.json",
            },
            ["champion version 3", "petal_width", "report.html", f"arrival drift --model {model}"],
        ),
        "ApprovalRequested": (
            {
                "name": model,
                "version": "6",
                "metrics": {"f1_macro": 0.97},
                "champion_version": "4",
                "reason": "f1_macro 0.97 beats champion 0.959 by 0.011",
                "run_id": "e5f6a7b8",
            },
            [
                "version 6 passed the gate",
                "beats champion 0.959",
                f"arrival approve --model {model} --version 6",
            ],
        ),
        "BatchCompleted": (
            {
                "name": model,
                "version": "4",
                "input": f"{inference}/input/nov.csv?versionId=v3",
                "output": f"{inference}/output/nov.predictions.parquet",
                "rejects": f"{inference}/output/nov.rejects.parquet",
                "rows_scored": 140,
                "rows_rejected": 10,
                "seconds": 0.8,
            },
            ["version 4 scored 140 row(s)", "nov.csv", "10 row(s) broke the contract", "aws s3 cp"],
        ),
        "BatchFailed": (
            {
                "name": model,
                "input": f"{inference}/input/bad.csv?versionId=v4",
                "reason": "unreadable: line 3 is not UTF-8",
                "rule": "unreadable",
                "report": f"{inference}/output/bad.failure.json",
            },
            [
                "bad.csv",
                "unreadable: line 3 is not UTF-8",
                f"aws s3 cp {inference}/output/bad.failure.json -",
                f"arrival contract get {model} --stack-name arrival-ingest",
            ],
        ),
    }


# Each event type's words are the formatter's (tests/unit/test_notifications.py checks every one of
# them, and that the template routes every arrival event to the notifier); the way from the bus to
# a subscriber is the same for all, so two types of different shape take it here.
EVENT_TYPES = ["ModelPromoted", "BatchFailed"]


@pytest.mark.parametrize("detail_type", EVENT_TYPES)
def test_an_event_on_the_bus_reaches_the_subscriber_as_a_message(
    pipeline: Pipeline, receiver: Receiver, unique: str, detail_type: str
) -> None:
    # GIVEN an endpoint subscribed to the stack's notification topic
    model = f"notify-{unique}"
    detail, expected = _events(model)[detail_type]

    # WHEN the event goes on the stack's bus, as its producer publishes it
    events.publish(pipeline.outputs["EventBusName"], detail_type, detail)

    # THEN a message naming the model, the version or file, the reason and a command reaches it
    message = receiver.notification(detail_type, model)
    text = message["Message"]
    assert f"Model {model}" in text
    for words in expected:
        assert words in text, f"{words!r} not in:\n{text}"
    assert "Look closer: " in text or "Approve: " in text
    assert message["Subject"].startswith(f"{pipeline.outputs['StackName']}: ")
    assert len(message["Subject"]) <= 100 and message["Subject"].isascii()


def test_an_event_the_notifier_does_not_know_still_reaches_the_subscriber(
    pipeline: Pipeline, receiver: Receiver, unique: str
) -> None:
    model = f"notify-{unique}"

    events.publish(pipeline.outputs["EventBusName"], "CaptureStopped", {"name": model, "reason": "disk full"})

    message = receiver.notification("CaptureStopped", model)
    assert "Event CaptureStopped from arrival" in message["Message"]
    assert "Reason: disk full" in message["Message"]


def test_a_file_the_ingest_function_quarantines_is_announced(
    pipeline: Pipeline, receiver: Receiver, unique: str
) -> None:
    # GIVEN a model with a contract
    model = f"notify-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    frame = datasets.iris_frame(40)
    frame.loc[[2, 3], "petal_width"] = -1.0

    # WHEN a file breaking it lands in the raw bucket (the ingest Lambda quarantines it)
    key = f"{model}/nov bad.csv"
    put = pipeline.upload(key, datasets.to_csv(frame))

    # THEN its DatasetQuarantined event, published by the ingest function, reaches the subscriber
    message = receiver.notification("DatasetQuarantined", model)
    text = message["Message"]
    assert f"file s3://{pipeline.outputs['RawBucketName']}/{key} (version {put['VersionId']})" in text
    assert "Reason: rule out_of_range" in text
    assert "petal_width" in text
    assert f"Report: s3://{pipeline.outputs['QuarantineBucketName']}/{key}.report.json" in text
    assert f"arrival contract check 'nov bad.csv' --contract {model} --stack-name arrival-ingest" in text
    assert message["Subject"] == f"{pipeline.outputs['StackName']}: {key} quarantined (out_of_range)"


def test_a_notification_that_cannot_be_sent_is_kept_with_its_reason_and_sent_by_a_redrive(
    pipeline: Pipeline, endpoint: Receiver, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the notification topic deleted, and the notifier told not to retry (Lambda's two retries
    # come one and then two minutes later, on LocalStack too)
    sns, lambdas = pipeline.cloud.client("sns"), pipeline.cloud.client("lambda")
    topic_arn, function = pipeline.outputs["NotificationTopicArn"], pipeline.outputs["NotifyFunctionName"]
    model = f"notify-{unique}"
    lambdas.put_function_event_invoke_config(FunctionName=function, MaximumRetryAttempts=0)
    sns.delete_topic(TopicArn=topic_arn)
    try:
        # WHEN an event comes
        events.publish(
            pipeline.outputs["EventBusName"],
            "ModelRolledBack",
            {"name": model, "version": "2", "from_version": "3", "reason": "rolled back from version 3"},
        )

        # THEN it lands in the notification dead-letter queue, whole, with SNS's reason
        kept = _dead_lettered(pipeline, model)
    finally:
        # The same name gives the same ARN back (the stack's own subscriptions, none here, would not be).
        assert sns.create_topic(Name=topic_arn.rsplit(":", 1)[1])["TopicArn"] == topic_arn
        lambdas.delete_function_event_invoke_config(FunctionName=function)
    assert json.loads(kept["Body"])["detail-type"] == "ModelRolledBack"
    reason = kept["MessageAttributes"]["ErrorMessage"]["StringValue"]
    assert "NotFound" in reason and "Publish" in reason

    # AND once the topic is back (with a subscriber: the old subscriptions went with it), a redrive
    # sends it, and the queue is empty after
    _subscribe(pipeline, endpoint)
    result = arrival(pipeline.cloud, monkeypatch, "redrive", "notify", "--stack-name", INGEST_STACK)
    assert result.exit_code == 0, result.output
    sent = re.search(r"sent (\d+) notification\(s\) again", result.output)
    assert sent and int(sent[1]) >= 1, result.output  # another event may have failed in the window
    message = endpoint.notification("ModelRolledBack", model)
    assert "rolled back from version 3" in message["Message"]
    again = arrival(pipeline.cloud, monkeypatch, "redrive", "notify", "--stack-name", INGEST_STACK)
    assert "sent 0 notification(s) again" in again.output


def _dead_lettered(pipeline: Pipeline, model: str) -> dict[str, Any]:
    sqs = pipeline.sqs
    queue_url = pipeline.outputs["NotificationDeadLetterQueueUrl"]

    def probe() -> dict[str, Any] | None:
        for message in sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=0,  # left in the queue, for the redrive
            MessageAttributeNames=["All"],
        ).get("Messages", []):
            if json.loads(message["Body"]).get("detail", {}).get("name") == model:
                return message  # type: ignore[no-any-return]
        return None

    return eventually(probe, COLD_START, interval=0, what=f"the event about {model} in the dead-letter queue")
