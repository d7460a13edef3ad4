"""The serving side, deployed: the stack's server instance, which the local instance agent boots,
answers on the local cloud's API port; the serving function answers through API Gateway. Both are
where `arrival status` says. The session's training stack is the one whose instances the agent boots,
so its server is the session's one server (the API port is one port)."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest

from localcloud import control
from serving.reload import ReloadSubscription
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


def test_promotions_and_rollbacks_reach_a_servers_own_reload_queue(
    local_cloud: LocalCloud, ingest_stack: dict[str, str], unique: str
) -> None:
    # GIVEN a queue of its own on the ingest stack's reload topic, as a server subscribes one (that
    # stack's server is only recorded; other tests' events on its bus are told apart by their model)
    events, sqs = local_cloud.client("events"), local_cloud.client("sqs")
    topic = ingest_stack["ServingReloadTopicArn"]
    subscription = ReloadSubscription(topic, partial(str, f"test-{unique}"))
    queue_url = subscription.open()
    model = f"reload-{unique}"
    sent = ["ModelPromoted", "ModelRejected", "ModelRolledBack"]
    try:
        events.put_events(
            Entries=[
                {
                    "EventBusName": ingest_stack["EventBusName"],
                    "Source": "arrival",
                    "DetailType": detail_type,
                    "Detail": json.dumps({"model": model}),
                }
                for detail_type in sent
            ]
        )
        received: list[str] = []

        def both_arrived() -> bool:
            messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            # Raw delivery: the event itself, not SNS's envelope around it
            bodies = [json.loads(message["Body"]) for message in messages]
            received.extend(body["detail-type"] for body in bodies if body["detail"]["model"] == model)
            return {"ModelPromoted", "ModelRolledBack"} <= set(received)

        # THEN promotions and rollbacks arrive (delivery is not ordered: wait for both)...
        eventually(both_arrived, 30, interval=0, what="both reload events")
        assert "ModelRejected" not in received
    finally:
        subscription.close()

    # ...AND the deployed rule that feeds the topic refuses a rejection, whenever it would arrive
    # (asked of the bus itself, not inferred from a quiet queue).
    rules = events.list_rules(EventBusName=ingest_stack["EventBusName"])["Rules"]
    (rule,) = [
        rule
        for rule in rules
        if any(
            target["Arn"] == topic
            for target in events.list_targets_by_rule(Rule=rule["Name"], EventBusName=rule["EventBusName"])[
                "Targets"
            ]
        )
    ]

    def routed(detail_type: str) -> bool:
        event = {
            "id": unique,
            "account": "000000000000",
            "source": "arrival",
            "time": "2026-12-07T00:00:00Z",
            "region": local_cloud.settings.region,
            "resources": [],
            "detail-type": detail_type,
            "detail": {"model": model},
        }
        return bool(
            events.test_event_pattern(EventPattern=rule["EventPattern"], Event=json.dumps(event))["Result"]
        )

    assert {detail_type: routed(detail_type) for detail_type in sent} == {
        "ModelPromoted": True,
        "ModelRejected": False,
        "ModelRolledBack": True,
    }
    # ...AND the server's queue went with its close
    assert not sqs.list_queues(QueueNamePrefix=subscription.queue_name or "-").get("QueueUrls")
