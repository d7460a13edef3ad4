"""The only place arrival's Lambda code touches EC2: finding and starting trainer instances."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import TagSpecificationTypeDef

ROLE_TAG = "arrival:role"
STACK_TAG = "arrival:stack"
LIVE_STATES = ["pending", "running"]


@cache
def ec2_client() -> EC2Client:
    return boto3.client("ec2")


def live_instances(role: str, stack: str) -> list[str]:
    """Ids of this stack's instances of one role that are pending or running."""
    pages = (
        ec2_client()
        .get_paginator("describe_instances")
        .paginate(
            Filters=[
                {"Name": f"tag:{ROLE_TAG}", "Values": [role]},
                {"Name": f"tag:{STACK_TAG}", "Values": [stack]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
    )
    return [
        instance["InstanceId"]
        for page in pages
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def run_from_template(launch_template_id: str, role: str, stack: str, client_token: str) -> str:
    """Start one instance from the stack's launch template, tagged so it can be found again.
    The client token makes a retried call start no second instance."""
    tag_specification: TagSpecificationTypeDef = {
        "ResourceType": "instance",
        "Tags": [{"Key": ROLE_TAG, "Value": role}, {"Key": STACK_TAG, "Value": stack}],
    }
    response = ec2_client().run_instances(
        LaunchTemplate={"LaunchTemplateId": launch_template_id, "Version": "$Latest"},
        MinCount=1,
        MaxCount=1,
        ClientToken=client_token,
        TagSpecifications=[tag_specification],
    )
    return response["Instances"][0]["InstanceId"]


def terminate(instance_id: str) -> None:
    ec2_client().terminate_instances(InstanceIds=[instance_id])


def instance_state(instance_id: str) -> str | None:
    """The instance's state name, or None if EC2 does not (yet) know the id."""
    try:
        reservations = ec2_client().describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ec2_client().exceptions.ClientError as error:
        if "InvalidInstanceID" in str(error):
            return None
        raise
    instances = [instance for reservation in reservations for instance in reservation["Instances"]]
    return instances[0]["State"]["Name"] if instances else None
