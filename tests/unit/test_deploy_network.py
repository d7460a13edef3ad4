"""What the deploy passes for VpcId and the subnets (localcloud/deploy.py): what it is given, else the
stack's own values, else the account's default VPC, said in one line; never a guess across VPCs."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.deploy import DeployError, _default_network, network_parameters

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "VpcId": {},
        "TrainerSubnetId": {},
        "ServingSubnetId": {},
        "ServingSecondSubnetId": {},
        "LogLevel": {},
    }
}
GIVEN = {
    "VpcId": "vpc-1",
    "TrainerSubnetId": "subnet-t",
    "ServingSubnetId": "subnet-s",
    "ServingSecondSubnetId": "subnet-s2",
}
DEFAULT = {
    "VpcId": "vpc-default",
    "TrainerSubnetId": "subnet-a",
    "ServingSubnetId": "subnet-a",
    "ServingSecondSubnetId": "subnet-b",
}


def _resolve(
    overrides: dict[str, str], previous: dict[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    said: list[str] = []
    resolved = network_parameters(TEMPLATE, overrides, previous or {}, lambda: DEFAULT, said.append)
    return resolved, said


def test_a_network_given_in_full_is_passed_as_given() -> None:
    assert _resolve(GIVEN) == ({}, [])


def test_a_new_stack_without_a_network_takes_the_default_vpc_and_says_so() -> None:
    resolved, said = _resolve({})
    assert resolved == DEFAULT
    assert said == [
        "VpcId, TrainerSubnetId, ServingSubnetId, ServingSecondSubnetId not given: "
        "using the default VPC vpc-default and its subnets subnet-a, subnet-b"
    ]


def test_an_update_without_a_network_keeps_the_stacks_own() -> None:
    # A forgotten setting must not move the stack's instances to the default VPC.
    assert _resolve({}, previous=GIVEN) == (GIVEN, [])


def test_a_network_given_in_part_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(DeployError, match=r"^TrainerSubnetId is required with VpcId, ServingSubnetId"):
        _resolve(
            {"VpcId": "vpc-1", "ServingSubnetId": "subnet-s", "ServingSecondSubnetId": "s2"}, previous=GIVEN
        )


def test_a_template_without_a_network_gets_none() -> None:
    said: list[str] = []
    assert network_parameters({"Parameters": {}}, {}, {}, lambda: DEFAULT, said.append) == {}
    assert said == []


class _Ec2:
    def __init__(self, vpcs: list[dict[str, Any]], subnets: list[dict[str, Any]]) -> None:
        self.vpcs, self.subnets = vpcs, subnets

    def describe_vpcs(self, Filters: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803  # boto3's name
        assert Filters == [{"Name": "is-default", "Values": ["true"]}]
        return {"Vpcs": self.vpcs}

    def describe_subnets(self, Filters: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        assert {"Name": "default-for-az", "Values": ["true"]} in Filters
        return {"Subnets": self.subnets}


def test_the_default_network_is_the_default_vpcs_subnets_in_the_first_two_zones() -> None:
    ec2 = _Ec2(
        [{"VpcId": "vpc-d"}],
        [
            {"SubnetId": "subnet-c", "AvailabilityZone": "eu-west-1c"},
            {"SubnetId": "subnet-a", "AvailabilityZone": "eu-west-1a"},
        ],
    )
    assert _default_network(ec2, "eu-west-1") == {
        "VpcId": "vpc-d",
        "TrainerSubnetId": "subnet-a",
        "ServingSubnetId": "subnet-a",
        "ServingSecondSubnetId": "subnet-c",
    }
    # One zone only: the load balancer's second subnet cannot be guessed
    with pytest.raises(DeployError, match=r"^ServingSecondSubnetId is required"):
        _default_network(_Ec2([{"VpcId": "vpc-d"}], ec2.subnets[:1]), "eu-west-1")


def test_an_account_without_a_default_vpc_is_refused_naming_the_parameters() -> None:
    with pytest.raises(DeployError, match=r"^VpcId is required: this account has no default VPC in eu-"):
        _default_network(_Ec2([], []), "eu-west-1")
    with pytest.raises(DeployError, match=r"^TrainerSubnetId is required"):
        _default_network(_Ec2([{"VpcId": "vpc-d"}], []), "eu-west-1")
