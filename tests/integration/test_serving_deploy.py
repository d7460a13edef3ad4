"""The serving side, deployed: the stack's server instance, which the local instance agent boots,
answers on the local cloud's API port; the serving function answers through API Gateway. Both are
where `arrival status` says. The session's training stack is the one whose instances the agent boots,
so its server is the session's one server (the API port is one port)."""

from __future__ import annotations

import json

import httpx
import pytest

from localcloud import control
from tests.conftest import TRAINING_STACK, LocalCloud
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoints(local_cloud: LocalCloud, training_stack: dict[str, str]) -> dict[str, str]:
    report = control.status(local_cloud.settings, stack_name=TRAINING_STACK)
    endpoints: dict[str, str] = report["endpoints"]
    return endpoints


def _status_code(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=30).status_code
    except httpx.TransportError:  # not listening yet
        return None


def test_status_names_the_functions_api(
    local_cloud: LocalCloud, training_stack: dict[str, str], endpoints: dict[str, str]
) -> None:
    # (The server's address that status names is checked by asking it, in the next test.)
    assert endpoints["api_lambda"] == (
        f"{local_cloud.endpoint_url}/_aws/execute-api/{training_stack['ServingApiId']}/Prod/"
    )


def test_the_agent_boots_the_stacks_server_on_the_api_port(
    local_cloud: LocalCloud, training_stack: dict[str, str], endpoints: dict[str, str]
) -> None:
    instance = local_cloud.client("ec2").describe_instances(InstanceIds=[training_stack["ServingInstanceId"]])
    assert instance["Reservations"][0]["Instances"][0]["State"]["Name"] in {"pending", "running"}

    # Where status says the API is, the stack's server answers.
    eventually(lambda: _status_code(f"{endpoints['api']}/health") == 200, 60, what="the server's /health")


def _function_errors(local_cloud: LocalCloud, function_name: str) -> list[str]:
    """The function's error lines, for a failure message: API Gateway only says 502."""
    events = local_cloud.client("logs").filter_log_events(
        logGroupName=f"/aws/lambda/{function_name}", filterPattern="ERROR"
    )["events"]
    lines = [line for event in events for line in event["message"].splitlines()]
    return [line for line in lines if line.startswith("[ERROR]")][-3:]


def test_the_serving_function_answers_through_api_gateway(
    local_cloud: LocalCloud, training_stack: dict[str, str], endpoints: dict[str, str]
) -> None:
    # The stack is complete once the function's environment is built, so its first answer is its answer.
    status = eventually(lambda: _status_code(f"{endpoints['api_lambda']}health"), 60, what="API Gateway")

    # API Gateway says only 502: the reason is in the function's log (read only on failure).
    assert status == 200, eventually(
        lambda: _function_errors(local_cloud, training_stack["ServingFunctionName"]),
        30,
        what=f"the error log of a function that answered {status}",
    )


def test_promotions_and_rollbacks_reach_the_reload_queue(
    local_cloud: LocalCloud, ingest_stack: dict[str, str], unique: str
) -> None:
    # On the ingest stack, whose server is only recorded: nothing else takes the queue's messages, and
    # other tests' events on its bus are told apart by their model.
    events, sqs = local_cloud.client("events"), local_cloud.client("sqs")
    # In one call, in order; the last is routed like the first, so once it is seen, a wrongly
    # routed ModelRejected before it would have been seen too.
    model, sentinel = f"reload-{unique}", f"sentinel-{unique}"
    sent = [
        ("ModelPromoted", model),
        ("ModelRejected", model),
        ("ModelRolledBack", model),
        ("ModelPromoted", sentinel),
    ]
    events.put_events(
        Entries=[
            {
                "EventBusName": ingest_stack["EventBusName"],
                "Source": "arrival",
                "DetailType": detail_type,
                "Detail": json.dumps({"model": name}),
            }
            for detail_type, name in sent
        ]
    )
    received: list[tuple[str, str]] = []

    def sentinel_arrived() -> bool:
        messages = sqs.receive_message(
            QueueUrl=ingest_stack["ServingReloadQueueUrl"], WaitTimeSeconds=1, MaxNumberOfMessages=10
        ).get("Messages", [])
        bodies = [json.loads(message["Body"]) for message in messages]
        received.extend(
            (body["detail-type"], body["detail"]["model"])
            for body in bodies
            if unique in body["detail"]["model"]
        )
        return ("ModelPromoted", sentinel) in received

    eventually(sentinel_arrived, 30, interval=0, what="the sentinel reload event")
    assert sorted(received) == [
        ("ModelPromoted", model),
        ("ModelPromoted", sentinel),
        ("ModelRolledBack", model),
    ]
