"""Reading a deployed stack's outputs: resource names come from the stack, never from code."""

from __future__ import annotations

from functools import cache

import boto3


@cache
def stack_outputs(stack_name: str) -> dict[str, str]:
    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
