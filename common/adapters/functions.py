"""The only place arrival's Lambda code invokes another function."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient


@cache
def lambda_client() -> LambdaClient:
    return boto3.client("lambda")


def invoke_async(function_name: str, payload: dict[str, Any]) -> None:
    """Queue an invocation and return at once; Lambda retries it if the function fails."""
    lambda_client().invoke(
        FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
    )


class FunctionFailedError(Exception):
    """A function answered a synchronous invocation with an error; the message is its own."""


def invoke(function_name: str, payload: dict[str, Any]) -> Any:
    """Run the function on `payload`, wait for it and return its answer (decoded JSON, None if
    empty); FunctionFailedError if it failed."""
    response = lambda_client().invoke(
        FunctionName=function_name, InvocationType="RequestResponse", Payload=json.dumps(payload).encode()
    )
    answer = json.loads(response["Payload"].read() or b"null")
    if "FunctionError" in response:
        answer = answer or {}
        raise FunctionFailedError(
            f"{answer.get('errorType', response['FunctionError'])}: {answer.get('errorMessage', '')}"
        )
    return answer
