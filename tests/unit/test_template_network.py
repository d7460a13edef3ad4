"""Nothing in template.yaml relies on the account's default VPC or its default security group: the
instances launch into the subnets the stack is given, in groups of the VPC it is given, and the
trainers accept no inbound connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]


def _of_type(resource_type: str) -> list[str]:
    return [name for name, resource in RESOURCES.items() if resource["Type"] == resource_type]


@pytest.mark.parametrize(
    ("name", "parameter_type"),
    [
        ("VpcId", "AWS::EC2::VPC::Id"),
        ("TrainerSubnetId", "AWS::EC2::Subnet::Id"),
        ("ServingSubnetId", "AWS::EC2::Subnet::Id"),
        ("ServingSecondSubnetId", "AWS::EC2::Subnet::Id"),
    ],
)
def test_the_network_is_a_required_parameter_checked_by_aws(name: str, parameter_type: str) -> None:
    # No default: a stack never lands in a default VPC because a setting was forgotten.
    assert PARAMETERS[name]["Type"] == parameter_type
    assert "Default" not in PARAMETERS[name]


def test_aws_refuses_subnets_outside_the_vpc_before_creating_anything() -> None:
    (assertion,) = TEMPLATE["Rules"]["SubnetsAreInTheVpc"]["Assertions"]
    assert assertion["Assert"] == {
        "Fn::EachMemberEquals": [{"Fn::ValueOfAll": ["AWS::EC2::Subnet::Id", "VpcId"]}, {"Ref": "VpcId"}]
    }


@pytest.mark.parametrize("group", _of_type("AWS::EC2::SecurityGroup"))
def test_every_security_group_lives_in_the_given_vpc(group: str) -> None:
    assert RESOURCES[group]["Properties"]["VpcId"] == {"Ref": "VpcId"}


def test_no_instance_or_launch_template_names_a_group_by_name() -> None:
    # SecurityGroups (names) means EC2-Classic or the default VPC; groups of a VPC go by id.
    for name in [*_of_type("AWS::EC2::Instance"), *_of_type("AWS::EC2::LaunchTemplate")]:
        properties = RESOURCES[name]["Properties"]
        assert "SecurityGroups" not in properties.get("LaunchTemplateData", properties), name


def test_trainers_launch_into_the_trainer_subnet_in_the_trainer_group() -> None:
    data = RESOURCES["TrainerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    (interface,) = data["NetworkInterfaces"]
    assert interface["DeviceIndex"] == 0
    assert interface["SubnetId"] == {"Ref": "TrainerSubnetId"}
    assert interface["Groups"] == [{"Fn::GetAtt": ["TrainerSecurityGroup", "GroupId"]}]
    # EC2 refuses groups both on the template and on its interface.
    assert "SecurityGroupIds" not in data


def test_the_server_launches_into_the_serving_subnet_in_the_serving_group() -> None:
    assert RESOURCES["ServingInstance"]["Properties"]["SubnetId"] == {"Ref": "ServingSubnetId"}
    data = RESOURCES["ServingLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["SecurityGroupIds"] == [{"Fn::GetAtt": ["ServingSecurityGroup", "GroupId"]}]


def test_trainers_accept_no_inbound_connection() -> None:
    group = RESOURCES["TrainerSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in group
    assert group["SecurityGroupEgress"], "an empty egress list would keep AWS's allow-all default"
    for name in _of_type("AWS::EC2::SecurityGroupIngress"):
        target = RESOURCES[name]["Properties"].get("GroupId")
        assert target != {"Fn::GetAtt": ["TrainerSecurityGroup", "GroupId"]}, name


def test_the_server_is_reachable_only_on_its_port_from_the_allowed_range() -> None:
    (rule,) = RESOURCES["ServingSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rule == {
        "IpProtocol": "tcp",
        "FromPort": {"Ref": "ServingPort"},
        "ToPort": {"Ref": "ServingPort"},
        "CidrIp": {"Ref": "ServingAllowedCidr"},
    }


def test_the_operators_mlflow_server_can_admit_the_trainer_group() -> None:
    output = TEMPLATE["Outputs"]["TrainerSecurityGroupId"]
    assert output["Value"] == {"Fn::GetAtt": ["TrainerSecurityGroup", "GroupId"]}


def test_the_s3_gateway_endpoint_is_optional_and_routed_from_the_given_tables() -> None:
    endpoint = RESOURCES["S3GatewayEndpoint"]
    assert endpoint["Condition"] == "CreatesS3GatewayEndpoint"
    assert PARAMETERS["CreateS3GatewayEndpoint"]["Default"] == "false"
    properties = endpoint["Properties"]
    assert properties["VpcEndpointType"] == "Gateway"
    assert properties["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"}
    assert properties["VpcId"] == {"Ref": "VpcId"}
    assert properties["RouteTableIds"] == {"Ref": "RouteTableIds"}
    rule = TEMPLATE["Rules"]["S3GatewayEndpointHasRouteTables"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "CreateS3GatewayEndpoint"}, "true"]}
