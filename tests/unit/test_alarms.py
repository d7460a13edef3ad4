"""The stack's alarms, read off template.yaml: every dead-letter queue, function, serving path and
trainer launch has one, each tells the notification topic, and each says what to run, with commands
the `arrival` CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from cli.logs import SOURCES
from cli.main import app
from cli.redrive import REDRIVE_STAGES
from common.reconcile import HEARTBEAT_LOST_METRIC, LAUNCH_FAILED_METRIC
from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
ALARMS = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
COMMAND = re.compile(r"`(arrival [^`]+)`")


def _alarms_on(namespace: str, metric: str) -> dict[str, dict[str, Any]]:
    return {
        name: alarm
        for name, alarm in ALARMS.items()
        if alarm["Namespace"] == namespace and alarm["MetricName"] == metric
    }


def _dead_letter_queues() -> set[str]:
    """Every queue something dead-letters into: a redrive policy's target or a function's DLQ."""
    found = set()
    for resource in RESOURCES.values():
        properties = resource.get("Properties", {})
        if target := properties.get("RedrivePolicy", {}).get("deadLetterTargetArn"):
            found.add(target["Fn::GetAtt"][0])
        if target := properties.get("DeadLetterQueue", {}).get("TargetArn"):
            found.add(target["Fn::GetAtt"][0])
    return found


def test_every_dead_letter_queue_has_an_alarm_on_its_visible_messages() -> None:
    alarms = _alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    watched = {alarm["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for alarm in alarms.values()}
    assert (
        watched
        == _dead_letter_queues()
        == {
            "IngestDeadLetterQueue",
            "TrainingDeadLetterQueue",
            "BatchDeadLetterQueue",
            "NotificationDeadLetterQueue",
        }
    )
    for alarm in alarms.values():
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
        # A queue SQS stopped reporting (six hours untouched) keeps its alarm in ALARM.
        assert alarm["TreatMissingData"] == "ignore"


def test_a_training_job_older_than_the_parameter_raises_an_alarm() -> None:
    (alarm,) = _alarms_on("AWS/SQS", "ApproximateAgeOfOldestMessage").values()
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["TrainingQueue", "QueueName"]}}
    ]
    assert alarm["Threshold"] == {"Ref": "TrainingQueueMaxAgeSeconds"}


def test_every_function_has_an_alarm_on_its_errors() -> None:
    functions = {name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
    watched = {
        alarm["Dimensions"][0]["Value"]["Ref"] for alarm in _alarms_on("AWS/Lambda", "Errors").values()
    }
    assert watched == functions and len(functions) == 7


def test_serving_5xx_is_watched_on_the_api_by_its_name_and_on_the_instance_by_its_log() -> None:
    (api,) = _alarms_on("AWS/ApiGateway", "5XXError").values()
    dimensions = {d["Name"]: d["Value"] for d in api["Dimensions"]}
    # API Gateway's metrics name the API, not its id: the name the template gives it.
    assert dimensions == {"ApiName": RESOURCES["ServingApi"]["Properties"]["Name"], "Stage": "Prod"}
    assert RESOURCES["ServingApi"]["Properties"]["StageName"] == "Prod"

    (metric_filter,) = [r["Properties"] for r in RESOURCES.values() if r["Type"] == "AWS::Logs::MetricFilter"]
    assert metric_filter["LogGroupName"] == {"Ref": "ServingLogGroup"}
    (transformation,) = metric_filter["MetricTransformations"]
    (instance,) = _alarms_on(transformation["MetricNamespace"], transformation["MetricName"]).values()
    assert instance["Statistic"] == "Sum"
    # The line the server logs for each prediction that failed inside it, its one 500.
    phrase = metric_filter["FilterPattern"].strip('"')
    assert f'LOG.exception("{phrase}:' in (ROOT / "serving" / "app.py").read_text()


@pytest.mark.parametrize("metric", [LAUNCH_FAILED_METRIC, HEARTBEAT_LOST_METRIC])
def test_failed_and_looping_trainer_launches_are_watched_by_the_reconcilers_metrics(metric: str) -> None:
    powertools = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    (alarm,) = _alarms_on(powertools["POWERTOOLS_METRICS_NAMESPACE"], metric).values()
    # The dimensions powertools gives the metric: its service, and the stack common/reconcile.py adds.
    service = powertools["POWERTOOLS_SERVICE_NAME"]
    assert alarm["Dimensions"] == [
        {"Name": "service", "Value": service},
        {"Name": "stack", "Value": {"Ref": "AWS::StackName"}},
    ]


@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_each_alarm_tells_the_topic_over_the_period_parameter(alarm: str) -> None:
    properties = ALARMS[alarm]
    assert properties["AlarmActions"] == properties["OKActions"] == [{"Ref": "NotificationTopic"}]
    assert properties["Period"] == {"Ref": "AlarmPeriodSeconds"}
    assert properties["EvaluationPeriods"] == 1


def test_the_alarm_period_is_one_cloudwatch_accepts_and_a_minute_on_aws() -> None:
    parameter = TEMPLATE["Parameters"]["AlarmPeriodSeconds"]
    assert parameter["Default"] == 60
    assert all(value in (10, 30) or value % 60 == 0 for value in parameter["AllowedValues"])


@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_each_alarm_says_what_to_run_with_commands_the_cli_has(alarm: str) -> None:
    description = " ".join(ALARMS[alarm]["AlarmDescription"]["Fn::Sub"].split())
    commands = COMMAND.findall(description)
    assert commands, description
    assert "`arrival status --stack-name ${AWS::StackName}`" in description
    known = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]  # a group
    for command in commands:
        words = command.split()
        assert words[1] in known, command
        if words[1] == "logs":
            assert words[2] in SOURCES, command
        if words[1] == "redrive":
            assert words[2] in REDRIVE_STAGES, command
