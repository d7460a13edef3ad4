"""The serving instances and, on AWS only, their load balancer (template.yaml): ServingInstances
instances alike but for their signal, in two subnets in turn, behind an Application Load Balancer
that checks /ready, each subscribing to the reload topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
INSTANCES = ["ServingInstance", "ServingInstance2", "ServingInstance3", "ServingInstance4"]


def _user_data(name: str) -> str:
    text: str = RESOURCES[name]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    return text


def test_serving_instances_is_one_to_four_and_one_by_default() -> None:
    assert PARAMETERS["ServingInstances"]["Default"] == 1
    assert PARAMETERS["ServingInstances"]["AllowedValues"] == [1, 2, 3, 4]
    assert PARAMETERS["ServingWorkers"]["Default"] == 0  # one per vCPU


@pytest.mark.parametrize(
    ("name", "condition", "subnet"),
    [
        ("ServingInstance", None, "ServingSubnetId"),
        ("ServingInstance2", "ServesTwo", "ServingSecondSubnetId"),
        ("ServingInstance3", "ServesThree", "ServingSubnetId"),
        ("ServingInstance4", "ServesFour", "ServingSecondSubnetId"),
    ],
)
def test_each_instance_exists_from_its_count_in_the_two_subnets_in_turn(
    name: str, condition: str | None, subnet: str
) -> None:
    resource = RESOURCES[name]
    assert resource.get("Condition") == condition
    assert resource["Properties"]["SubnetId"] == {"Ref": subnet}
    assert (
        resource["Properties"]["LaunchTemplate"]
        == RESOURCES["ServingInstance"]["Properties"]["LaunchTemplate"]
    )
    assert resource["CreationPolicy"] == RESOURCES["ServingInstance"]["CreationPolicy"]
    assert resource["Properties"]["Tags"] == RESOURCES["ServingInstance"]["Properties"]["Tags"]


def _is(count: str) -> dict[str, Any]:
    return {"Fn::Equals": [{"Fn::Join": ["", [{"Ref": "ServingInstances"}]]}, count]}


def test_the_counts_conditions_nest_so_an_instance_never_exists_without_the_one_before() -> None:
    conditions = TEMPLATE["Conditions"]
    assert conditions["ServesFour"] == _is("4")
    assert conditions["ServesThree"] == {"Fn::Or": [_is("3"), _is("4")]}
    assert conditions["ServesTwo"] == {"Fn::Or": [_is("2"), _is("3"), _is("4")]}


@pytest.mark.parametrize("name", INSTANCES[1:])
def test_every_instance_boots_as_the_first_and_signals_its_own_creation(name: str) -> None:
    first = _user_data("ServingInstance")
    assert _user_data(name) == first.replace(
        "ARRIVAL_CFN_SIGNAL_RESOURCE=ServingInstance\n", f"ARRIVAL_CFN_SIGNAL_RESOURCE={name}\n"
    )
    assert f"ARRIVAL_CFN_SIGNAL_RESOURCE={name}\n" in _user_data(name)


def test_each_server_is_told_the_reload_topic_and_its_workers_never_a_shared_queue() -> None:
    user_data = _user_data("ServingInstance")
    assert "export ARRIVAL_SERVING_RELOAD_TOPIC_ARN=${ServingReloadTopic}\n" in user_data
    workers = "ARRIVAL_SERVING_WORKERS=${ServingWorkers}"
    assert f"export {workers} ARRIVAL_SERVING_POLL_SECONDS=${{ServingPollSeconds}}\n" in user_data
    assert "QUEUE_URL" not in user_data
    assert not [name for name, resource in RESOURCES.items() if name.startswith("ServingReloadQueue")]
    targets = RESOURCES["ServingReloadRule"]["Properties"]["Targets"]
    assert targets == [{"Id": "ServingReloadTopic", "Arn": {"Ref": "ServingReloadTopic"}}]


def test_the_load_balancer_spans_two_subnets_and_forwards_to_every_instance_that_is_ready() -> None:
    balancer = RESOURCES["ServingLoadBalancer"]["Properties"]
    assert balancer["Type"] == "application"
    assert balancer["Subnets"] == [{"Ref": "ServingSubnetId"}, {"Ref": "ServingSecondSubnetId"}]
    group = RESOURCES["ServingTargetGroup"]["Properties"]
    assert (group["HealthCheckPath"], group["Matcher"], group["Port"]) == (
        "/ready",
        {"HttpCode": "200"},
        {"Ref": "ServingPort"},
    )
    assert group["Targets"] == [
        {"Id": {"Ref": "ServingInstance"}},
        {"Fn::If": ["ServesTwo", {"Id": {"Ref": "ServingInstance2"}}, {"Ref": "AWS::NoValue"}]},
        {"Fn::If": ["ServesThree", {"Id": {"Ref": "ServingInstance3"}}, {"Ref": "AWS::NoValue"}]},
        {"Fn::If": ["ServesFour", {"Id": {"Ref": "ServingInstance4"}}, {"Ref": "AWS::NoValue"}]},
    ]
    (action,) = RESOURCES["ServingListener"]["Properties"]["DefaultActions"]
    assert action == {"Type": "forward", "TargetGroupArn": {"Ref": "ServingTargetGroup"}}
    assert RESOURCES["ServingListener"]["Properties"]["LoadBalancerArn"] == {"Ref": "ServingLoadBalancer"}


def test_the_load_balancer_reaches_the_servers_port_and_only_that() -> None:
    balancer_group = {"Fn::GetAtt": ["ServingLoadBalancerSecurityGroup", "GroupId"]}
    assert RESOURCES["ServingLoadBalancer"]["Properties"]["SecurityGroups"] == [balancer_group]
    (egress,) = RESOURCES["ServingLoadBalancerSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert egress["DestinationSecurityGroupId"] == {"Fn::GetAtt": ["ServingSecurityGroup", "GroupId"]}
    ingress = RESOURCES["ServingSecurityGroupFromLoadBalancer"]["Properties"]
    assert ingress["SourceSecurityGroupId"] == balancer_group
    assert (ingress["FromPort"], ingress["ToPort"]) == ({"Ref": "ServingPort"}, {"Ref": "ServingPort"})
