"""Which cloud a command talks to.

While a local cloud runs, commands target it: its endpoint, LocalStack's dummy credentials and its
MLflow server. Real AWS is a choice made out loud (`--aws`, or `ARRIVAL_TARGET=aws` in the
environment or `.env`), never what a forgotten `export` falls back to: without it, boto3 would use
the person's default credentials and account, and MLflow a tracking store of its own in the working
directory (which is how an `mlflow.db` once got committed).
"""

from __future__ import annotations

import os
from enum import StrEnum

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from localcloud.settings import LocalCloudSettings

# What LocalStack accepts: any credentials, as long as there are some.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


class Target(StrEnum):
    local = "local"
    aws = "aws"


class CliSettings(BaseSettings):
    """The `arrival` command's own settings (ARRIVAL_*, from the environment or `.env`)."""

    model_config = SettingsConfigDict(env_prefix="ARRIVAL_", env_file=".env", extra="ignore")

    target: Target = Target.local
    api_key: SecretStr | None = Field(
        default=None,
        description="the serving API's key the commands send (x-api-key); unset: read from the stack's "
        "secret (its ServingApiKeySecretArn output)",
    )


class TargetError(Exception):
    """A command cannot tell where to go: one line saying what to do."""


def environment_for(
    target: Target, cloud: LocalCloudSettings, *, cloud_running: bool, environ: dict[str, str]
) -> dict[str, str]:
    """The variables to set before the command runs (nothing already set is overridden, except
    credentials sent to the local cloud)."""
    if target is Target.aws:
        if not environ.get("MLFLOW_TRACKING_URI"):
            raise TargetError(
                "MLFLOW_TRACKING_URI is not set: point it at your stack's tracking server "
                "(arrival never creates a tracking store of its own)"
            )
        return {}
    if environ.get("AWS_ENDPOINT_URL"):
        # Pointed somewhere on purpose (another local cloud, the tests' own): respected as it is.
        if not environ.get("MLFLOW_TRACKING_URI"):
            raise TargetError(
                f"AWS_ENDPOINT_URL is {environ['AWS_ENDPOINT_URL']} but MLFLOW_TRACKING_URI is not set: "
                "set it to that cloud's tracking server"
            )
        return {}
    if not cloud_running:
        raise TargetError(
            "no local cloud is running: start it with `arrival up` (or `make demo`); "
            "to use your AWS account instead, pass --aws (or set ARRIVAL_TARGET=aws)"
        )
    return {
        "AWS_ENDPOINT_URL": cloud.aws_endpoint_url,
        **LOCAL_CREDENTIALS,
        "AWS_DEFAULT_REGION": cloud.region,
        "MLFLOW_TRACKING_URI": environ.get("MLFLOW_TRACKING_URI") or cloud.mlflow_url,
    }


def describe(target: Target, environ: dict[str, str] | None = None) -> str:
    environ = dict(os.environ) if environ is None else environ
    if target is Target.aws:
        return f"AWS (region {environ.get('AWS_DEFAULT_REGION') or environ.get('AWS_REGION') or 'default'})"
    return f"the local cloud ({environ.get('AWS_ENDPOINT_URL') or 'when it runs'})"


# The stack output naming the Secrets Manager secret that holds the serving API's key (template.yaml).
API_KEY_SECRET_OUTPUT = "ServingApiKeySecretArn"  # noqa: S105  # a name, not a secret


def api_key_for_stack(stack_name: str) -> str:
    """The serving API's key for a stack: ARRIVAL_API_KEY if set (the environment or `.env`), else the
    value of the stack's secret, read with the caller's credentials from the cloud the environment
    points at. The one place the commands (and `arrival env`) find the key."""
    from botocore.exceptions import BotoCoreError, ClientError

    from common.adapters.secrets import secret_string
    from common.adapters.stack import stack_outputs

    configured = CliSettings().api_key
    if configured is not None:
        return configured.get_secret_value()
    try:
        secret = stack_outputs(stack_name).get(API_KEY_SECRET_OUTPUT)
        if not secret:
            raise TargetError(
                f"stack {stack_name!r} has no {API_KEY_SECRET_OUTPUT} output (deployed before the API "
                "needed a key?): deploy it again, or set ARRIVAL_API_KEY"
            )
        return secret_string(secret)
    except (ClientError, BotoCoreError) as error:
        raise TargetError(
            f"cannot read the API key of stack {stack_name!r} ({error}); set ARRIVAL_API_KEY, "
            "or check the stack's name (--stack-name) and your credentials"
        ) from error
