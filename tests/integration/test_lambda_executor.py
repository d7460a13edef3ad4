"""The process-based Lambda executor, driven by LocalStack exactly as AWS drives Lambda."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LocalCloud
from tests.helpers import eventually, receive_one

pytestmark = pytest.mark.integration

FAILURES_TEMPLATE = Path(__file__).parent / "failure_functions" / "template.yaml"


@pytest.fixture(scope="module")
def failure_stack(local_cloud: LocalCloud) -> dict[str, str]:
    return local_cloud.deploy(FAILURES_TEMPLATE, "arrival-failures", {"MaxReceiveCount": "2"})


def _invoke(local_cloud: LocalCloud, function_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    response = local_cloud.client("lambda").invoke(FunctionName=function_name, Payload=b"{}")
    return response, json.loads(response["Payload"].read())


@pytest.mark.parametrize("name", ["Raises", "Sleeps", "HogsMemory"])
def test_a_failing_function_lands_its_message_in_the_dead_letter_queue(
    local_cloud: LocalCloud, failure_stack: dict[str, str], name: str, unique: str
) -> None:
    # GIVEN a function that always fails, behind a queue with two deliveries before its DLQ
    sqs = local_cloud.client("sqs")
    # WHEN a message arrives
    sqs.send_message(QueueUrl=failure_stack[f"{name}QueueUrl"], MessageBody=json.dumps({"test": unique}))
    # THEN after the configured retries it is in the dead-letter queue, intact
    message = receive_one(sqs, failure_stack[f"{name}DeadLetterQueueUrl"], timeout=90)
    assert json.loads(message["Body"]) == {"test": unique}


def test_an_exception_comes_back_in_lambdas_error_shape(
    local_cloud: LocalCloud, failure_stack: dict[str, str]
) -> None:
    response, error = _invoke(local_cloud, failure_stack["RaisesFunctionName"])
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "RuntimeError"
    assert error["errorMessage"] == "this function always raises"
    assert any("app.py" in line for line in error["stackTrace"])


def test_a_function_past_its_timeout_is_stopped_as_on_aws(
    local_cloud: LocalCloud, failure_stack: dict[str, str]
) -> None:
    response, error = _invoke(local_cloud, failure_stack["SleepsFunctionName"])
    assert response["FunctionError"] == "Unhandled"
    assert "Task timed out after 2.00 seconds" in error["errorMessage"]


def test_a_function_past_its_memory_is_killed_as_on_aws(
    local_cloud: LocalCloud, failure_stack: dict[str, str]
) -> None:
    response, error = _invoke(local_cloud, failure_stack["HogsMemoryFunctionName"])
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.OutOfMemory"


def test_a_function_missing_a_declared_dependency_fails_to_import(
    local_cloud: LocalCloud, failure_stack: dict[str, str]
) -> None:
    # GIVEN a function importing requests, which its requirements.txt (six only) does not declare,
    # while the project's own environment and LocalStack's both have requests installed
    response, error = _invoke(local_cloud, failure_stack["ForgetsDependencyFunctionName"])
    # THEN it fails as it would on AWS
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "No module named 'requests'" in error["errorMessage"]


def test_the_report_line_gives_max_memory_used(
    local_cloud: LocalCloud, failure_stack: dict[str, str]
) -> None:
    function_name = failure_stack["RaisesFunctionName"]
    _invoke(local_cloud, function_name)
    logs = local_cloud.client("logs")

    def report_lines() -> list[str]:
        events = logs.filter_log_events(logGroupName=f"/aws/lambda/{function_name}").get("events", [])
        return [event["message"] for event in events if event["message"].startswith("REPORT")]

    lines = eventually(report_lines, timeout=30, what="a REPORT log line")
    assert "Max Memory Used:" in lines[0]
    assert "Memory Size: 128 MB" in lines[0]
