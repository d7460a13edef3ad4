"""The only place arrival's Lambda code touches EC2: finding, starting and ending trainer instances."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import TagSpecificationTypeDef

ROLE_TAG = "arrival:role"
STACK_TAG = "arrival:stack"
LIVE_STATES = ["pending", "running"]
# The release an instance's user data installs (template.yaml, deploy/arrival-boot.sh).
_RELEASE_IN_USER_DATA = re.compile(r"ARRIVAL_RELEASE_URI=s3://[^/\s]+/releases/([^/\s]+)")

# A call must end well inside the reconciler's lease (30 s by default), so a holder never acts on
# a lease it lost while a call hung. botocore's defaults (60 s to connect, 60 s per read, retried)
# could hold one call for minutes. Standard mode's first retry backs off at most 1 s.
_CONNECT_SECONDS, _READ_SECONDS, _ATTEMPTS = 3, 8, 2
WORST_CASE_CALL_SECONDS = _ATTEMPTS * (_CONNECT_SECONDS + _READ_SECONDS) + 1.0


@dataclass(frozen=True)
class Instance:
    instance_id: str
    launched_at: float  # epoch seconds


@cache
def ec2_client() -> EC2Client:
    config = Config(
        connect_timeout=_CONNECT_SECONDS,
        read_timeout=_READ_SECONDS,
        retries={"mode": "standard", "total_max_attempts": _ATTEMPTS},
    )
    return boto3.client("ec2", config=config)


def live_instances_launched(role: str, stack: str) -> list[Instance]:
    """This stack's instances of one role that are pending or running, with their launch times."""
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
        Instance(instance["InstanceId"], instance["LaunchTime"].timestamp())
        for page in pages
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def live_instances(role: str, stack: str) -> list[str]:
    """Ids of this stack's instances of one role that are pending or running."""
    return [instance.instance_id for instance in live_instances_launched(role, stack)]


def run_from_template(launch_template_id: str, role: str, stack: str, client_token: str) -> str:
    """Start one instance from the stack's launch template, tagged so it can be found again.
    EC2 answers a repeated client token with the instance it started for it, not a second one."""
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


def instance_release(instance_id: str) -> str | None:
    """The release the instance's user data installs; None if it names none (or is gone). Read from
    the user data, which is what the instance ran, not from the stack, which may have moved on."""
    try:
        attribute = ec2_client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    except ec2_client().exceptions.ClientError:
        return None
    encoded = attribute.get("UserData", {}).get("Value", "")
    found = (
        _RELEASE_IN_USER_DATA.search(base64.b64decode(encoded).decode(errors="replace")) if encoded else None
    )
    return found.group(1) if found else None
