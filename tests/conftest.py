"""Fixtures shared by every tier. The local cloud is started once per test session, on free ports and
in a state directory of its own, so a stack a person left running is never touched."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from localcloud import control
from localcloud.deploy import deploy_stack
from localcloud.processes import free_port
from localcloud.settings import LocalCloudSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INGEST_STACK = "arrival-ingest"
TRAINING_STACK = "arrival-train"
# Short enough that a test sees a quiet period end, a lease lapse and an idle trainer go away.
WORKER_SETTINGS = {
    "ARRIVAL_WORKER_QUIET_SECONDS": "1",
    "ARRIVAL_WORKER_IDLE_SECONDS": "20",
    "ARRIVAL_WORKER_VISIBILITY_SECONDS": "10",
    "ARRIVAL_WORKER_MAX_ATTEMPTS": "2",
    "ARRIVAL_WORKER_RETRY_BACKOFF_SECONDS": "1",
    "ARRIVAL_WORKER_HEARTBEAT_SECONDS": "2",
}

# Short timeouts and retries, so failure paths reach their dead-letter queues in seconds.
TEST_STACK_PARAMETERS = {
    "IngestTimeoutSeconds": "30",
    "IngestVisibilityTimeoutSeconds": "35",
    "IngestMaxReceiveCount": "2",
}
# The stack whose trainers really run: a frozen one is found out in seconds (a heartbeat every 2 s).
# (The ingest stacks' trainers are records that never beat; they keep the template's defaults.)
TRAINING_STACK_PARAMETERS = {
    **TEST_STACK_PARAMETERS,
    "TrainerHeartbeatStaleSeconds": "15",
    "TrainerBootGraceSeconds": "60",
}


@dataclass(frozen=True)
class LocalCloud:
    settings: LocalCloudSettings
    endpoint_url: str
    session: boto3.session.Session

    def client(self, service: str):  # type: ignore[no-untyped-def]
        return self.session.client(service)  # type: ignore[call-overload]

    def deploy(self, template: Path, stack_name: str, parameters: dict[str, str]) -> dict[str, str]:
        return deploy_stack(template, stack_name, parameters)


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    state_dir = tmp_path_factory.mktemp("cloud")
    # The agent boots the training stack's instances only (its trainers and its server, the one
    # server of the session's API port); the ingest tests' stacks keep their instances as records,
    # and a stand-in consumes their jobs (tests/e2e/conftest.py).
    settings = LocalCloudSettings(
        state_dir=state_dir,
        aws_port=free_port(),
        mlflow_port=free_port(),
        api_port=free_port(),
        agent_stacks=[TRAINING_STACK],
    )
    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": settings.region,
            "MLFLOW_TRACKING_URI": settings.mlflow_url,
            **WORKER_SETTINGS,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    control.up(settings)
    try:
        yield LocalCloud(settings, settings.aws_endpoint_url, boto3.session.Session())
    finally:
        control.down(settings)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def ingest_stack(local_cloud: LocalCloud) -> dict[str, str]:
    """The production template, deployed once with short test timeouts; its trainers are not booted."""
    return local_cloud.deploy(PROJECT_ROOT / "template.yaml", INGEST_STACK, TEST_STACK_PARAMETERS)


@pytest.fixture(scope="session")
def training_stack(local_cloud: LocalCloud) -> dict[str, str]:
    """The production template again, whose trainer instances the agent boots."""
    return local_cloud.deploy(PROJECT_ROOT / "template.yaml", TRAINING_STACK, TRAINING_STACK_PARAMETERS)


@pytest.fixture
def unique() -> str:
    """A short unique name for what one test creates, instead of tearing the cloud down."""
    return uuid.uuid4().hex[:10]
