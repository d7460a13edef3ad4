"""The only place arrival reads AWS Secrets Manager: credentials the stack keeps there (the API key,
the MLflow login), read by the process that needs them at first use, never baked into user data,
environment variables of the template or images."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


@cache
def secrets_client() -> SecretsManagerClient:
    return boto3.client("secretsmanager")


def secret_string(secret_id: str) -> str:
    """The secret's current value (its AWSCURRENT stage, which a rotation moves)."""
    return secrets_client().get_secret_value(SecretId=secret_id)["SecretString"]


def secret_json(secret_id: str) -> dict[str, Any]:
    """A secret holding a JSON object, as Secrets Manager's generated and rotated secrets do."""
    value = json.loads(secret_string(secret_id))
    if not isinstance(value, dict):
        raise ValueError(f"secret {secret_id} holds {type(value).__name__}, not a JSON object")
    return value
