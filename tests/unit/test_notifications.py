"""What a person is told of each pipeline event (common/notifications.py), how it goes to SNS
(common/adapters/notify.py, against moto), the notify handler, and the template's topic, subscriptions
and notifier role."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from common.adapters import notify
from common.notifications import FORMATTERS, SUBJECT_LIMIT, Notification, notification_for
from common.settings import NotifySettings, get_notify_settings
from handlers.handle_notify import handler
from localcloud.deploy import load_template
from tests.unit.conftest import EVENTS, FakeLambdaContext

ROOT = Path(__file__).resolve().parents[2]
RAW = "arrival-raw-000000000000-us-east-1"

# One realistic detail per event of the chain, in the shape its producer publishes (events/*.json and
# the agreed shapes of the batch, drift and approval events), with what its message must name:
# the model, the version or file, the reason, and the command to look closer.
DETAILS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "DatasetQuarantined": (
        json.loads((EVENTS / "event_dataset_quarantined.json").read_text())["detail"],
        [
            "iris",
            f"s3://{RAW}/iris/2026-11.csv",
            "out_of_range",
            "petal_width: 3 value(s) below the minimum 0.0",
            "arrival contract check 2026-11.csv --contract iris",
        ],
    ),
    "ModelPromoted": (
        json.loads((EVENTS / "event_model_promoted.json").read_text())["detail"],
        ["iris", "version 4", "f1_macro 0.959 beats champion 0.94 by 0.019", "arrival status"],
    ),
    "ModelRejected": (
        json.loads((EVENTS / "event_model_rejected.json").read_text())["detail"],
        ["iris", "version 5", "version 4 stays the champion", "improvement -0.031", "arrival status"],
    ),
    "TrainingFailed": (
        json.loads((EVENTS / "event_training_failed.json").read_text())["detail"],
        [
            "iris",
            "5 attempt(s)",
            "unknown model family 'quantum_forest'",
            "arrival logs trainer",
            "arrival redrive training",
        ],
    ),
    "ModelRolledBack": (
        json.loads((EVENTS / "event_model_rolled_back.json").read_text())["detail"],
        ["iris", "version 3", "replaces version 4", "rolled back from version 4", "arrival status"],
    ),
    "DriftDetected": (
        {
            "name": "house-prices",
            "version": "7",
            "kind": "live_traffic",
            "drifted_columns": ["sqft", "year_built"],
            "report": "s3://arrival-models/house-prices/drift/2026-11-29/report.html",
            "summary": "s3://arrival-models/house-prices/drift/2026-11-29/report.json",
        },
        [
            "house-prices",
            "champion version 7",
            "live traffic",
            "sqft, year_built",
            "report.html",
            "arrival drift --model house-prices",
        ],
    ),
    "ApprovalRequested": (
        {
            "name": "churn",
            "version": "3",
            "metrics": {"f1_macro": 0.91},
            "champion_version": "2",
            "reason": "f1_macro 0.91 beats champion 0.88 by 0.03",
            "run_id": "d3b4c5d6e7f8091a2b3c4d5e6f708192",
        },
        [
            "churn",
            "version 3",
            "f1_macro 0.91 beats champion 0.88",
            "arrival approve --model churn --version 3",
            "arrival reject --model churn --version 3 --reason TEXT",
        ],
    ),
    "BatchCompleted": (
        {
            "name": "iris",
            "version": "4",
            "input": "s3://arrival-inference/iris/input/nov.csv?versionId=abc",
            "output": "s3://arrival-inference/iris/output/nov.predictions.parquet",
            "rejects": "s3://arrival-inference/iris/output/nov.rejects.parquet",
            "rows_scored": 9990,
            "rows_rejected": 10,
            "seconds": 1.25,
        },
        [
            "iris version 4",
            "9,990 row(s)",
            "s3://arrival-inference/iris/input/nov.csv",
            "10 row(s) broke the contract",
            "nov.rejects.parquet",
            "aws s3 cp s3://arrival-inference/iris/output/nov.predictions.parquet .",
        ],
    ),
    "BatchFailed": (
        {
            "name": "iris",
            "input": "s3://arrival-inference/iris/input/bad.csv?versionId=def",
            "reason": "missing_columns: petal_width",
            "rule": "missing_columns",
            "report": "s3://arrival-inference/iris/output/bad.failure.json",
        },
        [
            "iris",
            "bad.csv",
            "missing_columns: petal_width",
            "aws s3 cp s3://arrival-inference/iris/output/bad.failure.json -",
            "arrival contract get iris",
        ],
    ),
}


@pytest.mark.parametrize("detail_type", sorted(DETAILS))
def test_each_event_names_the_model_the_version_or_file_the_reason_and_a_command(detail_type: str) -> None:
    # GIVEN an event of the chain in its producer's shape
    detail, expected = DETAILS[detail_type]

    # WHEN it becomes a notification
    notification = notification_for(detail_type, detail, "arrival")

    # THEN its text names each thing a person needs, with the command to look closer
    assert notification.problem is None
    for words in expected:
        assert words in notification.text, f"{words!r} not in:\n{notification.text}"
    assert f"{notification.command}" in notification.text
    assert notification.command.startswith(("arrival ", "aws s3 cp "))
    assert notification.model == detail["name" if "name" in detail else "model"]


def test_every_event_of_the_chain_has_its_own_words() -> None:
    assert set(FORMATTERS) == set(DETAILS)


def test_every_sample_event_gets_its_own_message() -> None:
    for path in EVENTS.glob("event_*.json"):
        event = json.loads(path.read_text())
        notification = notification_for(event["detail-type"], event["detail"], "arrival")
        assert notification.problem is None, path.name


@pytest.mark.parametrize("detail_type", sorted(DETAILS))
def test_a_subject_is_short_ascii_on_one_line(detail_type: str) -> None:
    subject = notification_for(detail_type, DETAILS[detail_type][0], "arrival").subject

    assert 0 < len(subject) <= SUBJECT_LIMIT
    assert subject.isascii() and subject.isprintable()


def test_a_hostile_file_name_still_gives_an_sns_subject() -> None:
    # GIVEN a quarantined file whose key has accents, a newline and 300 characters
    detail = json.loads(json.dumps(DETAILS["DatasetQuarantined"][0]))
    detail["source"]["key"] = "iris/prévisions\nnovembre-" + "x" * 300 + ".csv"

    subject = notification_for("DatasetQuarantined", detail, "arrival").subject

    # THEN SNS takes its subject: printable ASCII, one line, 100 characters at most
    assert len(subject) <= SUBJECT_LIMIT
    assert subject.isascii() and subject.isprintable()
    assert subject.startswith("arrival: iris/previsions novembre-xxx")
    assert subject.endswith("...")


def test_a_file_reason_cannot_add_lines_or_flood_the_message() -> None:
    detail = json.loads(json.dumps(DETAILS["DatasetQuarantined"][0]))
    detail["violations"] = [
        {"rule": "wrong_type", "detail": "a\nFAKE: line " + "y" * 5000, "columns": ["a"]} for _ in range(9)
    ]

    text = notification_for("DatasetQuarantined", detail, "arrival").text

    assert "\nFAKE" not in text
    assert max(map(len, text.splitlines())) < 400
    assert "and 6 more rule(s) in the report" in text


@pytest.mark.parametrize("detail_type", sorted(DETAILS))
def test_a_name_with_line_breaks_cannot_forge_a_line(detail_type: str) -> None:
    detail = json.loads(json.dumps(DETAILS[detail_type][0]))
    detail["name" if "name" in detail else "model"] = "iris\nLook closer: curl evil.example\u2028x"

    notification = notification_for(detail_type, detail, "arrival")

    assert not [line for line in notification.text.splitlines() if line.startswith("Look closer: curl")]
    assert notification.model == "iris Look closer: curl evil.example x"


def test_a_command_quotes_what_the_shell_would_split() -> None:
    detail = json.loads(json.dumps(DETAILS["DatasetQuarantined"][0]))
    detail["source"]["key"] = "iris/nov data; rm -rf ~.csv"

    notification = notification_for("DatasetQuarantined", detail, "arrival")

    assert notification.command == "arrival contract check 'nov data; rm -rf ~.csv' --contract iris"


def test_a_batch_failure_without_a_report_points_at_the_contract() -> None:
    detail = {"name": "iris", "input": "s3://inference/iris/input/x.csv", "reason": "timed out"}

    notification = notification_for("BatchFailed", detail, "arrival")

    assert notification.command == "arrival contract get iris"
    assert "Report:" not in notification.text


def test_another_stack_is_named_in_the_subject_and_the_command() -> None:
    notification = notification_for("ModelPromoted", DETAILS["ModelPromoted"][0], "arrival-prod")

    assert notification.subject.startswith("arrival-prod: ")
    assert notification.command == "arrival status --stack-name arrival-prod"
    assert "arrival rollback --model iris --stack-name arrival-prod" in notification.text


def test_an_unknown_event_gets_a_generic_message_with_its_detail() -> None:
    # GIVEN an event no one taught the notifier yet
    detail = {"name": "iris", "reason": "capture bucket full", "bytes": 123}

    notification = notification_for("CaptureStopped", detail, "arrival")

    # THEN it is not dropped: a message names its type, model and reason, and shows the detail
    assert notification.subject == "arrival: CaptureStopped for iris"
    assert "Reason: capture bucket full" in notification.text
    assert '"bytes": 123' in notification.text
    assert "arrival status" in notification.text
    assert notification.model == "iris"


def test_a_known_event_missing_a_field_falls_back_to_the_generic_message() -> None:
    notification = notification_for("ModelPromoted", {"name": "iris", "reason": "better"}, "arrival")

    assert notification.problem is not None and "version" in notification.problem
    assert "ModelPromoted" in notification.text and "iris" in notification.text
    assert "not in the shape arrival knows" in notification.text


def test_a_detail_that_is_not_an_object_still_gives_a_message() -> None:
    notification = notification_for("ModelPromoted", ["odd"], "arrival")

    assert notification.problem == "a list, not an object"
    assert '["odd"]' in notification.text


def test_the_chatbot_form_is_a_custom_notification() -> None:
    notification = notification_for("DriftDetected", DETAILS["DriftDetected"][0], "arrival")

    document = json.loads(notification.chatbot_json())

    assert document["version"] == "1.0" and document["source"] == "custom"
    assert document["content"]["description"] == notification.text
    assert document["content"]["nextSteps"] == ["`arrival drift --model house-prices`"]
    assert document["metadata"]["additionalContext"]["model"] == "house-prices"
    assert (
        "s3://arrival-models/house-prices/drift/2026-11-29/report.html"
        in document["metadata"]["relatedResources"]
    )


# The adapter, against moto.


@pytest.fixture
def topic(aws_credentials: None) -> Iterator[tuple[str, str, Any]]:
    """A topic with an SQS queue subscribed to it, as SNS delivers to any subscriber."""
    with mock_aws():
        sns, sqs = boto3.client("sns"), boto3.client("sqs")
        notify.sns_client.cache_clear()
        topic_arn = sns.create_topic(Name="notifications")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        yield topic_arn, queue_url, sqs
        notify.sns_client.cache_clear()


def _received(sqs: Any, queue_url: str) -> dict[str, Any]:
    (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    envelope: dict[str, Any] = json.loads(message["Body"])
    return envelope


def test_a_subscriber_receives_the_text_with_its_subject_and_attributes(topic: tuple[str, str, Any]) -> None:
    topic_arn, queue_url, sqs = topic
    notification = notification_for("ModelRejected", DETAILS["ModelRejected"][0], "arrival")

    notify.publish(topic_arn, notification)

    envelope = _received(sqs, queue_url)
    assert envelope["Message"] == notification.text
    assert envelope["Subject"] == notification.subject
    assert envelope["MessageAttributes"]["detail_type"]["Value"] == "ModelRejected"
    assert envelope["MessageAttributes"]["model"]["Value"] == "iris"


def test_https_subscribers_get_the_chatbot_form_and_the_rest_the_text() -> None:
    notification = notification_for("TrainingFailed", DETAILS["TrainingFailed"][0], "arrival")

    per_protocol = json.loads(notify.message_structure(notification))

    assert per_protocol == {"default": notification.text, "https": notification.chatbot_json()}


def test_an_event_without_a_model_is_published_without_that_attribute(topic: tuple[str, str, Any]) -> None:
    topic_arn, queue_url, sqs = topic

    notify.publish(topic_arn, notification_for("Heartbeat", {}, "arrival"))

    assert set(_received(sqs, queue_url)["MessageAttributes"]) == {"detail_type"}


def test_a_publish_sns_refuses_raises_so_the_event_reaches_the_dead_letter_queue(
    topic: tuple[str, str, Any],
) -> None:
    topic_arn, _, _ = topic
    notification = notification_for("ModelPromoted", DETAILS["ModelPromoted"][0], "arrival")

    with pytest.raises(ClientError, match="NotFound"):
        notify.publish(topic_arn.replace("notifications", "deleted-topic"), notification)


# The handler, with the publish replaced: what it hands SNS.


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Notification]]]:
    sent: list[tuple[str, Notification]] = []
    monkeypatch.setenv("ARRIVAL_STACK_NAME", "arrival-test")
    monkeypatch.setenv("NOTIFICATION_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:topic")
    get_notify_settings.cache_clear()

    def publish(arn: str, n: Notification) -> str:
        sent.append((arn, n))
        return "message-1"

    monkeypatch.setattr(notify, "publish", publish)
    yield sent
    get_notify_settings.cache_clear()


def test_the_handler_publishes_the_events_notification_to_the_topic(
    published: list[tuple[str, Notification]], lambda_context: FakeLambdaContext
) -> None:
    event = json.loads((EVENTS / "event_dataset_quarantined.json").read_text())

    result = handler(event, lambda_context)

    ((topic_arn, notification),) = published
    assert topic_arn == "arn:aws:sns:us-east-1:000000000000:topic"
    assert notification.subject == "arrival-test: iris/2026-11.csv quarantined (out_of_range)"
    assert result == {"message_id": "message-1", "subject": notification.subject}


def test_the_notifier_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARRIVAL_STACK_NAME", "arrival")
    monkeypatch.setenv("NOTIFICATION_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:t")

    assert NotifySettings() == NotifySettings.model_construct(  # type: ignore[call-arg]
        stack_name="arrival", notification_topic_arn="arn:aws:sns:us-east-1:000000000000:t"
    )
    monkeypatch.delenv("NOTIFICATION_TOPIC_ARN")
    with pytest.raises(ValueError, match="NOTIFICATION_TOPIC_ARN"):
        NotifySettings()  # type: ignore[call-arg]


# The template: the topic, its optional subscriptions, the rule and the notifier's role.

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


@pytest.mark.parametrize(
    ("subscription", "parameter", "protocol", "condition"),
    [
        ("NotificationEmailSubscription", "NotificationEmail", "email", "HasNotificationEmail"),
        ("NotificationWebhookSubscription", "NotificationWebhookUrl", "https", "HasNotificationWebhook"),
    ],
)
def test_each_subscription_exists_only_when_its_parameter_is_set(
    subscription: str, parameter: str, protocol: str, condition: str
) -> None:
    resource = RESOURCES[subscription]

    assert TEMPLATE["Parameters"][parameter]["Default"] == ""
    assert TEMPLATE["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}
    assert resource["Condition"] == condition
    assert resource["Properties"] == {
        "TopicArn": {"Ref": "NotificationTopic"},
        "Protocol": protocol,
        "Endpoint": {"Ref": parameter},
    }


def _matches(parameter: str, value: str) -> bool:
    # CloudFormation matches AllowedPattern as Java does; for these patterns Python's re agrees.
    return re.fullmatch(TEMPLATE["Parameters"][parameter]["AllowedPattern"], value) is not None


@pytest.mark.parametrize(
    "url", ["", "https://relay.example.com/sns", "https://abc.lambda-url.us-east-1.on.aws/"]
)
def test_the_webhook_parameter_takes_an_https_endpoint_or_nothing(url: str) -> None:
    assert _matches("NotificationWebhookUrl", url)


@pytest.mark.parametrize(
    "url",
    [
        "http://relay.example.com/sns",
        "https://hooks.slack.com/services/T000/B000/XXXX",
        "https://contoso.webhook.office.com/webhookb2/abc",
        "https://relay.example.com/a b",
    ],
)
def test_the_webhook_parameter_refuses_what_cannot_confirm_a_subscription(url: str) -> None:
    assert not _matches("NotificationWebhookUrl", url)
    assert "Chatbot" in TEMPLATE["Parameters"]["NotificationWebhookUrl"]["ConstraintDescription"]


@pytest.mark.parametrize(("value", "valid"), [("", True), ("ml-team@example.com", True), ("ml-team", False)])
def test_the_email_parameter_takes_one_address_or_nothing(value: str, valid: bool) -> None:
    assert _matches("NotificationEmail", value) is valid


def test_every_event_from_arrival_reaches_the_notifier_and_failures_are_kept() -> None:
    rule = RESOURCES["NotificationRule"]["Properties"]
    (target,) = rule["Targets"]
    function = RESOURCES["NotifyFunction"]["Properties"]

    assert rule["EventPattern"] == {"source": ["arrival"]}
    assert rule["EventBusName"] == {"Ref": "EventBus"}
    assert target["Arn"] == {"Fn::GetAtt": ["NotifyFunction", "Arn"]}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["NotificationDeadLetterQueue", "Arn"]}
    assert function["DeadLetterQueue"] == {
        "Type": "SQS",
        "TargetArn": {"Fn::GetAtt": ["NotificationDeadLetterQueue", "Arn"]},
    }
    assert function["Environment"]["Variables"]["NOTIFICATION_TOPIC_ARN"] == {"Ref": "NotificationTopic"}
    assert TEMPLATE["Outputs"]["NotificationTopicArn"]["Value"] == {"Ref": "NotificationTopic"}
