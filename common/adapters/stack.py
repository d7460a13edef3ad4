"""Reading a deployed stack's outputs: resource names come from the stack, never from code."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import boto3


def configured_region() -> str | None:
    """The region boto3 calls the stack in: its environment's, else its config file's; None if neither."""
    return boto3.session.Session().region_name


@cache
def stack_outputs(stack_name: str) -> dict[str, str]:
    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def stack_parameter(stack_name: str, key: str) -> str | None:
    """The value the stack was deployed with for one template parameter; None if it has none."""
    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    values = {found["ParameterKey"]: found.get("ParameterValue") for found in stack.get("Parameters", [])}
    return values.get(key) or None


@dataclass(frozen=True)
class StackResources:
    """What the training worker uses of a stack."""

    processed_bucket: str
    config_bucket: str
    event_bus_name: str
    dvc_remote_url: str
    models_bucket: str

    @classmethod
    def from_outputs(cls, outputs: dict[str, str]) -> StackResources:
        return cls(
            processed_bucket=outputs["ProcessedBucketName"],
            config_bucket=outputs["ConfigBucketName"],
            event_bus_name=outputs["EventBusName"],
            dvc_remote_url=outputs["DvcRemoteUrl"],
            models_bucket=outputs["ModelsBucketName"],
        )
