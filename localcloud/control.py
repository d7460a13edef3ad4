"""What ``arrival up``, ``down`` and ``status`` do, as functions the CLI and the tests share."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from localcloud import emulator
from localcloud.deploy import stack_outputs
from localcloud.processes import (
    CLOUD_ID_VARIABLE,
    exclusive_lock,
    is_alive,
    lock_is_held,
    marked_processes,
    port_is_free,
    port_is_listening,
    terminate,
    wait_until,
)
from localcloud.settings import LocalCloudSettings
from localcloud.supervisor import StatePaths, read_state, running_pid


class LocalCloudError(RuntimeError):
    """A failure the user can act on; its message is one line that says how."""


@dataclass(frozen=True)
class UpResult:
    pid: int
    already_running: bool
    endpoints: dict[str, str]


def _port_settings(settings: LocalCloudSettings) -> dict[str, int]:
    # The API port too, though only the serving instance the agent boots listens on it: refused
    # now, not when a stack is deployed and its server dies on a port another program holds.
    return {
        "ARRIVAL_AWS_PORT": settings.aws_port,
        "ARRIVAL_MLFLOW_PORT": settings.mlflow_port,
        "ARRIVAL_API_PORT": settings.api_port,
    }


# The operator's own MLflow login, if their shell has one. The cloud's trainers read theirs from the
# stack's secret, as on AWS; inherited from whoever ran `arrival up`, it would hide a stack that
# gives them none.
OPERATOR_ONLY_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _environment(settings: LocalCloudSettings) -> dict[str, str]:
    return {
        **{name: value for name, value in os.environ.items() if name not in OPERATOR_ONLY_VARIABLES},
        "ARRIVAL_STATE_DIR": str(settings.state_dir.resolve()),
        "ARRIVAL_CACHE_DIR": str(settings.cache_dir.resolve()),
        "ARRIVAL_AWS_PORT": str(settings.aws_port),
        "ARRIVAL_MLFLOW_PORT": str(settings.mlflow_port),
        "ARRIVAL_API_PORT": str(settings.api_port),
        "ARRIVAL_REGION": settings.region,
        "ARRIVAL_AGENT_ROLES": json.dumps(settings.agent_roles),
        **(
            {"ARRIVAL_AGENT_STACKS": json.dumps(settings.agent_stacks)}
            if settings.agent_stacks is not None
            else {}
        ),
        "ARRIVAL_MLFLOW_ARTIFACT_BUCKET": settings.mlflow_artifact_bucket,
        "ARRIVAL_IAM_ENFORCEMENT": "1" if settings.iam_enforcement else "0",
        CLOUD_ID_VARIABLE: settings.cloud_id,
    }


def up(settings: LocalCloudSettings, say: Callable[[str], None] = lambda _: None) -> UpResult:
    paths = StatePaths(settings.state_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # Serialises concurrent `arrival up`s; the supervisor's own lock guards its lifetime.
    with exclusive_lock(settings.state_dir / "up.lock", blocking=True):
        pid = running_pid(paths)
        if pid is not None and lock_is_held(paths.lock):
            state = read_state(paths)
            return UpResult(pid, already_running=True, endpoints=_endpoints(settings, state))
        for variable, port in _port_settings(settings).items():
            if not port_is_free(port):
                raise LocalCloudError(
                    f"port {port} is already in use by another program; "
                    f"set {variable} to a free port (e.g. {variable}={port + 1000})"
                )
        # Built here, in the foreground, so a first run shows its progress and its errors.
        emulator.ensure_virtualenv(settings, say)
        paths.state.unlink(missing_ok=True)
        with paths.log.open("ab") as log:
            supervisor = subprocess.Popen(
                emulator.supervisor_argv(settings),
                env=_environment(settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: it outlives this command and its terminal
                cwd=settings.state_dir,
            )
        say(f"supervisor started (pid {supervisor.pid}); waiting for LocalStack")

        def settled() -> bool:
            return supervisor.poll() is not None or read_state(paths).get("status") in {"ready", "failed"}

        wait_until(settled, settings.startup_timeout_seconds + 30, interval=0.2)
        state = read_state(paths)
        if state.get("status") != "ready":
            reason = state.get("error") or f"see {paths.log}"
            if supervisor.poll() is None:
                terminate([supervisor.pid], settings.shutdown_timeout_seconds)
            raise LocalCloudError(f"the local cloud did not start: {reason}")
        return UpResult(supervisor.pid, already_running=False, endpoints=_endpoints(settings, state))


def down(settings: LocalCloudSettings) -> bool:
    """Stop the supervisor and wait until every process has exited and every port is closed.
    Returns whether a supervisor was running."""
    paths = StatePaths(settings.state_dir)
    ports = read_state(paths).get("ports", [settings.aws_port, settings.mlflow_port])
    pid = running_pid(paths)
    if pid is not None:
        terminate([pid], settings.shutdown_timeout_seconds)
        wait_until(lambda: not is_alive(pid), settings.shutdown_timeout_seconds)
    # Whatever a killed supervisor left behind (its children die with it, but not instantly).
    if not wait_until(lambda: not marked_processes(settings.cloud_id), 15):
        terminate(marked_processes(settings.cloud_id), 5)
    if not wait_until(lambda: not any(port_is_listening(port) for port in ports), 15):
        busy = [port for port in ports if port_is_listening(port)]
        raise LocalCloudError(f"ports {busy} are still listening after the local cloud stopped")
    paths.pidfile.unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    return pid is not None


def _endpoints(settings: LocalCloudSettings, state: dict[str, Any]) -> dict[str, str]:
    """The supervisor's record of where its services answer, and the model API's address, which
    is where the agent runs a stack's server."""
    endpoints: dict[str, str] = state.get(
        "endpoints", {"aws": settings.aws_endpoint_url, "mlflow": settings.mlflow_url}
    )
    return {**endpoints, "api": endpoints.get("api", settings.api_url)}


def _serving_api_id(endpoint_url: str, region: str, stack_name: str) -> str | None:
    """The deployed stack's REST API, if the stack is there. Asked of this local cloud's own
    endpoint, whatever AWS_ENDPOINT_URL says, and quickly: status must answer even if it is busy."""
    cloudformation = boto3.client(
        "cloudformation",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106  # LocalStack accepts any credentials
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        return stack_outputs(cloudformation, stack_name).get("ServingApiId")
    except (ClientError, BotoCoreError):
        return None


def status(settings: LocalCloudSettings, stack_name: str = "arrival") -> dict[str, Any]:
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths)
    state = read_state(paths) if pid is not None else {}
    running = pid is not None and state.get("status") == "ready"
    endpoints = _endpoints(settings, state)
    api_id = _serving_api_id(endpoints["aws"], settings.region, stack_name) if running else None
    if api_id:
        # LocalStack's address for a REST API's stage, as `ServingApiUrl` is AWS's.
        endpoints["api_lambda"] = f"{endpoints['aws']}/_aws/execute-api/{api_id}/Prod/"
    return {
        "running": running,
        "status": state.get("status", "stopped"),
        "pid": pid,
        "state_dir": str(settings.state_dir),
        "endpoints": endpoints,
        "mlflow_artifact_bucket": settings.mlflow_artifact_bucket,
        "services": state.get("services", {}),
        # Why the last local cloud stopped on its own (a service that exited), until the next `up`.
        "last_error": read_state(paths).get("error"),
    }
