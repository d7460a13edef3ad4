"""Fixtures shared by every tier. The local cloud is started once per test run, on free ports and in
a state directory of its own, so a stack a person left running is never touched. Under pytest-xdist
the workers share that one cloud and one deploy of each stack (`once_per_run`)."""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from filelock import FileLock

from localcloud import control
from localcloud.deploy import deploy_stack, load_template, login_secret_name, put_login_secret
from localcloud.processes import free_port
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import TrackingLogin, read_login

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INGEST_STACK = "arrival-ingest"
TRAINING_STACK = "arrival-train"
# A second stack whose trainers the agent boots, for the tests that need trainers and the registry
# but not the API: a lane of their own beside the training lane. Its server boots on a port of its
# own (the API port is the first stack's), which none of its tests asks.
SECOND_TRAINING_STACK = "arrival-train-2"
# A stack of several serving instances with several workers each, whose servers the agent boots
# (tests/e2e/test_serving_scale_out.py); it trains nothing.
SERVING_STACK = "arrival-serving"
# Short enough that a test sees a quiet period end, a lease lapse and an idle trainer go away.
WORKER_SETTINGS = {
    "ARRIVAL_WORKER_QUIET_SECONDS": "1",
    "ARRIVAL_WORKER_IDLE_SECONDS": "20",
    "ARRIVAL_WORKER_VISIBILITY_SECONDS": "10",
    "ARRIVAL_WORKER_MAX_ATTEMPTS": "2",
    "ARRIVAL_WORKER_RETRY_BACKOFF_SECONDS": "1",
    "ARRIVAL_WORKER_HEARTBEAT_SECONDS": "2",
    # An idle trainer of an older release ends before the next test's job reaches it.
    "ARRIVAL_WORKER_RELEASE_CHECK_SECONDS": "1",
}

# Short timeouts and retries, so failure paths reach their dead-letter queues in seconds.
TEST_STACK_PARAMETERS = {
    "IngestTimeoutSeconds": "30",
    "IngestVisibilityTimeoutSeconds": "35",
    "IngestMaxReceiveCount": "2",
    # The local cloud's SQS reports every 10 s (localcloud/emulator.py): an alarm fires in seconds.
    "AlarmPeriodSeconds": "10",
    # Notifications of keys under this prefix are deleted before ingest sees them: files whose
    # notification was lost, for the sweep to find (tests/e2e/test_sweep.py). No other test uses it.
    "TestDropNotificationsPrefix": "lost-",
    "SweepIntervalMinutes": "1",
}
# The stack whose trainers really run: a frozen one is found out in seconds (a heartbeat every 2 s).
# (The ingest stacks' trainers are records that never beat; they keep the template's defaults.)
TRAINING_STACK_PARAMETERS = {
    **TEST_STACK_PARAMETERS,
    "TrainerHeartbeatStaleSeconds": "15",
    "TrainerBootGraceSeconds": "60",
    # One worker process for each training stack's server, as before servers ran one per core: the
    # tests that use them need one, and the 2-core machine runs the whole suite.
    "ServingWorkers": "1",
}


@dataclass(frozen=True)
class LocalCloud:
    settings: LocalCloudSettings
    endpoint_url: str
    session: boto3.session.Session

    def client(self, service: str):  # type: ignore[no-untyped-def]
        return self.session.client(service)  # type: ignore[call-overload]

    @property
    def tracking_login(self) -> TrackingLogin:
        """The login the cloud's tracking server made for itself (localcloud/tracking_login.py)."""
        login = read_login(self.settings.state_dir)
        assert login is not None, f"the local cloud in {self.settings.state_dir} has no MLflow login"
        return login

    def deploy(self, template: Path, stack_name: str, parameters: dict[str, str]) -> dict[str, str]:
        """As `arrival deploy` does on the local cloud: the tracking server's login goes into the
        stack's secret (for a template that takes one), and the functions' packages leave their
        dependencies to the local Lambda executor."""
        if "MlflowLoginSecretArn" not in load_template(template).get("Parameters", {}):
            return deploy_stack(template, stack_name, parameters, vendor_dependencies=False)
        login = self.tracking_login
        secret = put_login_secret(login_secret_name(stack_name), login.username, login.password)
        return deploy_stack(
            template, stack_name, {"MlflowLoginSecretArn": secret, **parameters}, vendor_dependencies=False
        )


def _run_dir(config: pytest.Config) -> Path:
    """A directory every process of this test run shares: the controller's base temporary directory
    (pytest-xdist gives each worker a subdirectory of it), or pytest's own without xdist."""
    basetemp: Path = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]  # as xdist reads it
    return basetemp.parent if hasattr(config, "workerinput") else basetemp


def once_per_run(config: pytest.Config, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What `make` returns, made by the first process of the run that asks and read back by the
    others, so xdist's workers share one local cloud and one deploy of each stack."""
    run_dir = _run_dir(config)
    record = run_dir / f"{name}.json"
    with FileLock(run_dir / f"{name}.lock"):
        if record.exists():
            made: dict[str, Any] = json.loads(record.read_text())
            return made
        made = make()
        record.write_text(json.dumps(made))
        return made


def _start_cloud(state_dir: Path) -> dict[str, Any]:
    # The agent boots the training stack's instances only (its trainers and its server, the one
    # server of the session's API port); the ingest tests' stacks keep their instances as records,
    # and a stand-in consumes their jobs (tests/e2e/conftest.py).
    settings = LocalCloudSettings(
        state_dir=state_dir,
        aws_port=free_port(),
        mlflow_port=free_port(),
        api_port=free_port(),
        agent_stacks=[TRAINING_STACK, SECOND_TRAINING_STACK, SERVING_STACK],
        # The proof that what passes here is allowed on AWS: each role gets only its policies.
        iam_enforcement=True,
    )
    # The supervisor, and so every trainer it boots, inherits these.
    os.environ.update(_cloud_environment(settings))
    os.environ.pop("AWS_PROFILE", None)
    control.up(settings)
    return settings.model_dump(mode="json")


# Every variable `_cloud_environment` sets (and AWS_PROFILE, which it removes): a worker keeps them
# once it has run a local-cloud test, and tests/unit/conftest.py takes them away from unit tests.
CLOUD_ENVIRONMENT_NAMES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    *WORKER_SETTINGS,
)


def _cloud_environment(settings: LocalCloudSettings) -> dict[str, str]:
    """What every process that talks to this session's cloud is given: the SDKs pointed at it, and
    a trainer short enough in its waits for a test to see them end."""
    return {
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",  # pragma: allowlist secret  # LocalStack's dummy
        "AWS_DEFAULT_REGION": settings.region,
        "MLFLOW_TRACKING_URI": settings.mlflow_url,
        **WORKER_SETTINGS,
    }


@pytest.fixture(scope="session")
def local_cloud(request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    """One local cloud for the whole run, whichever xdist worker asks first; stopped by the
    controller once every worker is done (`pytest_sessionfinish`)."""
    saved = dict(os.environ)  # before the cloud's start, which sets the same variables
    settings = LocalCloudSettings.model_validate(
        once_per_run(request.config, "cloud", lambda: _start_cloud(_run_dir(request.config) / "cloud"))
    )
    os.environ.update(_cloud_environment(settings))
    os.environ.pop("AWS_PROFILE", None)
    cloud = LocalCloud(settings, settings.aws_endpoint_url, boto3.session.Session())
    # The tests' own MLflow clients log in as the operator does. Set only now, after the cloud has
    # started: its trainers must find their login in the stack's secret, not inherit this one.
    os.environ.update(
        {
            "MLFLOW_TRACKING_USERNAME": cloud.tracking_login.username,
            "MLFLOW_TRACKING_PASSWORD": cloud.tracking_login.password,
        }
    )
    try:
        yield cloud
    finally:
        os.environ.clear()
        os.environ.update(saved)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without xdist) stops the run's local cloud, if one was started."""
    if hasattr(session.config, "workerinput"):
        return
    record = _run_dir(session.config) / "cloud.json"
    if record.exists():
        control.down(LocalCloudSettings.model_validate_json(record.read_text()))


@pytest.fixture(scope="session")
def ingest_stack(request: pytest.FixtureRequest, local_cloud: LocalCloud) -> dict[str, str]:
    """The production template, deployed once with short test timeouts; its trainers are not booted."""
    return once_per_run(
        request.config,
        INGEST_STACK,
        lambda: local_cloud.deploy(PROJECT_ROOT / "template.yaml", INGEST_STACK, TEST_STACK_PARAMETERS),
    )


@pytest.fixture(scope="session")
def training_stack(request: pytest.FixtureRequest, local_cloud: LocalCloud) -> dict[str, str]:
    """The production template again, whose trainer instances the agent boots."""
    return once_per_run(
        request.config,
        TRAINING_STACK,
        lambda: local_cloud.deploy(PROJECT_ROOT / "template.yaml", TRAINING_STACK, TRAINING_STACK_PARAMETERS),
    )


@pytest.fixture(scope="session")
def second_training_stack(request: pytest.FixtureRequest, local_cloud: LocalCloud) -> dict[str, str]:
    """The production template a third time: trainers booted, its server on a port of its own."""
    return once_per_run(
        request.config,
        SECOND_TRAINING_STACK,
        lambda: local_cloud.deploy(
            PROJECT_ROOT / "template.yaml", SECOND_TRAINING_STACK, TRAINING_STACK_PARAMETERS
        ),
    )


@contextmanager
def tracking_server_lock(config: pytest.Config, mode: int) -> Iterator[None]:
    """The run's tracking server, shared (fcntl.LOCK_SH) by a test whose trainings need it, or taken
    alone (LOCK_EX) by one that stops it: the two training lanes use the same server."""
    with (_run_dir(config) / "tracking-server.lock").open("a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def tracking_server_alone(request: pytest.FixtureRequest) -> Callable[[], AbstractContextManager[None]]:
    """For a test that kills or freezes the tracking server: `with tracking_server_alone():` around
    the outage, and no test of the other training lane runs meanwhile (such a test holds no shared
    lock of its own: tests/e2e/conftest.py)."""
    return lambda: tracking_server_lock(request.config, fcntl.LOCK_EX)


@pytest.fixture
def unique() -> str:
    """A short unique name for what one test creates, instead of tearing the cloud down."""
    return uuid.uuid4().hex[:10]


# Tests that share the training stack's one trainer and act on the whole cloud (kill its workers,
# its tracking server) run one after another in one xdist worker: the training lane. The tests on
# the second training stack run in a lane of their own (they hold the tracking server shared, so a
# test that stops it waits for them); the other local-cloud tests (ingest, the executor) run in the
# cloud lane, and the modules that need no cloud are spread over whichever worker is free. The
# ingest stack's stand-in trainer (tests/e2e/conftest.py's `pipeline`) drains its queue in the
# process that made it, so the tests that read it must all be in one lane.
@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        stacks = fixtures & {"training_stack", "second_training_stack", "pipeline"}
        if len(stacks) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(stacks)}: the lanes keep them apart")
        if "training_stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("training"))
        elif "second_training_stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group("training-2"))
        elif "local_cloud" in fixtures:
            item.add_marker(pytest.mark.xdist_group("cloud"))
        else:
            # By module, as `--dist loadscope` would: a module's fixtures (six package builds,
            # cfn-lint's rules) are then made once, not once per worker that takes one of its tests.
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.hookimpl(trylast=True)  # after xdist has suffixed the grouped tests' ids
def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop the run if xdist no longer groups: the lanes would then run side by side on one stack."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    ungrouped = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not group {ungrouped[0]} (and {len(ungrouped) - 1} more): "
            "this pytest and pytest-xdist pair cannot run `--dist loadgroup` (pyproject.toml says which)"
        )
