"""Which cloud a command talks to.

While a local cloud runs, commands target it: its endpoint, LocalStack's dummy credentials and its
MLflow server. Real AWS is a choice made out loud (`--aws`, or `ARRIVAL_TARGET=aws` in the
environment or `.env`), never what a forgotten `export` falls back to: without it, boto3 would use
the person's default credentials and account, and MLflow a tracking store of its own in the working
directory (which is how an `mlflow.db` once got committed).
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import ParamSpec, TypeVar

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.tracking_login import MlflowLogin, login_from_environment
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import read_login

# What LocalStack accepts: any credentials, as long as there are some.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
# The local cloud's Lambda executor installs each function's requirements.txt itself, so its deploys
# skip vendoring them (CliSettings.vendor_lambda_deps): the zips stay small and the deploy fast.
LOCAL_PACKAGING = {"ARRIVAL_VENDOR_LAMBDA_DEPS": "0"}


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
    vendor_lambda_deps: bool = Field(
        default=True,
        description="`arrival deploy` packs each function's dependencies into its zip, built for the "
        "Lambda runtime, as AWS needs; the local cloud's deploys turn this off (0), since its Lambda "
        "executor installs requirements.txt itself. The Makefile's build targets read the same variable.",
    )


class TargetError(Exception):
    """A command cannot tell where to go: one line saying what to do."""


StackLogin = Callable[[str], MlflowLogin | None]


def login_from_stack(stack_name: str) -> MlflowLogin | None:
    """The login in the stack's secret (its MlflowLoginSecretArn parameter), read with the caller's
    own AWS credentials; None when there is no such stack or secret, or it cannot be read: the
    command then goes without one, and the tracking server's 401 says so."""
    from botocore.exceptions import BotoCoreError, ClientError

    from common.adapters import secrets, stack
    from common.tracking_login import LOGIN_SECRET_PARAMETER, TrackingLoginError, login_from_secret

    try:
        secret_id = stack.stack_parameter(stack_name, LOGIN_SECRET_PARAMETER)
        return login_from_secret(secret_id, secrets.secret_json(secret_id)) if secret_id else None
    except (BotoCoreError, ClientError, TrackingLoginError, ValueError):
        return None


@dataclass(frozen=True)
class TrackingAccess:
    """Where the operator's MLflow client goes, and as whom (None: anonymously)."""

    uri: str
    login: MlflowLogin | None

    def environment(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, **(self.login.environment() if self.login else {})}


def tracking_access(
    target: Target,
    cloud: LocalCloudSettings,
    environ: dict[str, str],
    stack_name: str | None = None,
    stack_login: StackLogin | None = None,
) -> TrackingAccess:
    """The MLflow URI and login for the target (what `arrival env` prints). The login is
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD if both are set; else, for the local
    cloud, its own from its state directory (no network); else, for AWS, the stack's secret."""
    uri = environ.get("MLFLOW_TRACKING_URI") or (cloud.mlflow_url if target is Target.local else "")
    if not uri:
        raise TargetError(
            "MLFLOW_TRACKING_URI is not set: point it at your stack's tracking server "
            "(arrival never creates a tracking store of its own)"
        )
    if (login := login_from_environment(environ)) is not None:
        return TrackingAccess(uri, login)
    if target is Target.local:
        local = read_login(cloud.state_dir)
        return TrackingAccess(uri, MlflowLogin(local.username, local.password) if local else None)
    read_stack_login = stack_login or login_from_stack
    return TrackingAccess(uri, read_stack_login(stack_name or environ.get("ARRIVAL_STACK_NAME") or "arrival"))


def environment_for(
    target: Target,
    cloud: LocalCloudSettings,
    *,
    cloud_running: bool,
    environ: dict[str, str],
    stack_login: StackLogin | None = None,
) -> dict[str, str]:
    """The variables to set before the command runs (nothing already set is overridden, except
    credentials sent to the local cloud)."""
    if target is Target.aws:
        return _tracking_only(tracking_access(target, cloud, environ, stack_login=stack_login), environ)
    packaging = {name: value for name, value in LOCAL_PACKAGING.items() if name not in environ}
    if environ.get("AWS_ENDPOINT_URL"):
        # Pointed somewhere on purpose (another local cloud, the tests' own): respected as it is.
        if not environ.get("MLFLOW_TRACKING_URI"):
            raise TargetError(
                f"AWS_ENDPOINT_URL is {environ['AWS_ENDPOINT_URL']} but MLFLOW_TRACKING_URI is not set: "
                "set it to that cloud's tracking server"
            )
        return {
            **packaging,
            **_tracking_only(tracking_access(target, cloud, environ, stack_login=stack_login), environ),
        }
    if not cloud_running:
        raise TargetError(
            "no local cloud is running: start it with `arrival up` (or `make demo`); "
            "to use your AWS account instead, pass --aws (or set ARRIVAL_TARGET=aws)"
        )
    return {
        "AWS_ENDPOINT_URL": cloud.aws_endpoint_url,
        **LOCAL_CREDENTIALS,
        "AWS_DEFAULT_REGION": cloud.region,
        **packaging,
        **tracking_access(target, cloud, environ, stack_login=stack_login).environment(),
    }


def _tracking_only(access: TrackingAccess, environ: dict[str, str]) -> dict[str, str]:
    """What the access adds to an environment that chose its endpoints itself: its login alone."""
    return {name: value for name, value in access.environment().items() if name not in environ}


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


@dataclass(frozen=True)
class ShellEnvironment:
    """What `arrival env` prints: the variables that point a shell at the target, and what could not
    be found (said on stderr, so `eval` still gets the rest)."""

    variables: dict[str, str]
    missing: list[str]

    def export_lines(self) -> str:
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.variables.items())


def shell_environment(
    target: Target,
    cloud: LocalCloudSettings,
    environ: dict[str, str],
    stack_name: str,
    local_api_url: str | None,
    stack_login: StackLogin | None = None,
) -> ShellEnvironment:
    """The target's endpoint (local only, with LocalStack's dummy credentials), region, tracking
    server and login, and the serving API with its key. `environ` is the command's environment once
    `environment_for` has pointed it at the target; the API key is read as `api_key_for_stack` reads
    it, with that environment's credentials."""
    variables: dict[str, str] = {}
    missing: list[str] = []
    if target is Target.local:
        variables["AWS_ENDPOINT_URL"] = environ.get("AWS_ENDPOINT_URL") or cloud.aws_endpoint_url
        variables.update(LOCAL_CREDENTIALS)
    from common.adapters.stack import configured_region

    region = environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or configured_region()
    if region:
        variables["AWS_DEFAULT_REGION"] = region
    else:
        missing.append("AWS_DEFAULT_REGION: no region configured (aws configure, or AWS_REGION)")
    variables.update(tracking_access(target, cloud, environ, stack_name, stack_login).environment())
    if "MLFLOW_TRACKING_USERNAME" not in variables:
        missing.append("MLFLOW_TRACKING_USERNAME/PASSWORD: no login found for the tracking server")
    api_url = environ.get("ARRIVAL_API_URL") or (
        local_api_url if target is Target.local else _stack_output(stack_name, "ServingApiUrl")
    )
    if api_url:
        variables["ARRIVAL_API_URL"] = api_url
    else:
        missing.append(f"ARRIVAL_API_URL: no serving API known for stack {stack_name!r}")
    try:
        variables["ARRIVAL_API_KEY"] = api_key_for_stack(stack_name)
    except TargetError as error:
        missing.append(f"ARRIVAL_API_KEY: {error}")
    return ShellEnvironment(variables, missing)


def _stack_output(stack_name: str, output: str) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError

    from common.adapters.stack import stack_outputs

    try:
        return stack_outputs(stack_name).get(output)
    except (ClientError, BotoCoreError):
        return None


P = ParamSpec("P")
R = TypeVar("R")
# The cloud this invocation targets, set by the app's callback (--aws, ARRIVAL_TARGET) before any
# command runs; read by `needs_a_cloud`, which has no context of its own to read it from.
_chosen_target: ContextVar[Target] = ContextVar("chosen_target")


def choose(target: Target) -> None:
    _chosen_target.set(target)


def needs_a_cloud(command: Callable[P, R]) -> Callable[P, R]:
    """Marks a command that talks to a cloud: it points at the chosen one once its arguments are
    parsed, so `--help` and a usage error never need a cloud running."""

    @functools.wraps(command)
    def pointed(*args: P.args, **kwargs: P.kwargs) -> R:
        point_at_cloud(_chosen_target.get())
        return command(*args, **kwargs)

    return pointed


def point_at_cloud(target: object) -> None:
    """Set the environment for the chosen cloud, or exit with one line saying what to do."""
    from cli.output import fail
    from localcloud import control
    from localcloud.settings import get_local_cloud_settings

    settings = get_local_cloud_settings()
    running = bool(target == Target.local and control.status(settings)["running"])
    try:
        os.environ.update(
            environment_for(Target(str(target)), settings, cloud_running=running, environ=dict(os.environ))
        )
    except TargetError as error:
        raise fail(error) from error
