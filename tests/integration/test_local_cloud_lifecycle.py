"""`arrival up` / `down`: one supervisor per state directory, and nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from localcloud import control
from localcloud.processes import free_port, marked_processes, port_is_listening, process_tree, wait_until
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import read_login
from tests.conftest import LocalCloud

pytestmark = pytest.mark.integration


def _fresh_settings(tmp_path: Path) -> LocalCloudSettings:
    return LocalCloudSettings(
        state_dir=tmp_path / "cloud", aws_port=free_port(), mlflow_port=free_port(), api_port=free_port()
    )


def test_a_second_up_is_a_no_op_that_says_so(local_cloud: LocalCloud) -> None:
    before = control.status(local_cloud.settings)

    again = control.up(local_cloud.settings)

    assert again.already_running is True
    assert again.pid == before["pid"]
    assert control.status(local_cloud.settings)["running"] is True


def test_a_port_taken_by_another_program_is_named_with_its_setting(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = LocalCloudSettings(
            state_dir=tmp_path / "cloud", aws_port=port, mlflow_port=free_port(), api_port=free_port()
        )

        with pytest.raises(control.LocalCloudError) as error:
            control.up(settings)

    message = str(error.value)
    assert f"port {port}" in message
    assert "ARRIVAL_AWS_PORT" in message
    assert "\n" not in message


def test_a_fresh_cloud_through_a_crash_a_down_and_a_killed_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One state directory through what a cloud's life holds: three starts of a cloud of its own
    (each start costs seconds of both cores), instead of one per test.

    LocalStack keeps its state in memory: after a crash nothing of the stack survives. The local
    cloud must then stop as a whole (not limp on with an empty emulator under a full registry), say
    why, and `arrival up` must give a cloud whose registry is as empty as its buckets. `down` leaves
    no process and no port; a supervisor killed with SIGKILL takes every service with it."""
    import boto3
    from mlflow.tracking import MlflowClient

    settings = _fresh_settings(tmp_path)
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # pragma: allowlist secret  # LocalStack's dummy
        region_name="us-east-1",
    )
    try:
        # GIVEN a cloud holding a bucket and an experiment
        control.up(settings)
        # (MLflow's client reads its login from these on every request.)
        login = read_login(settings.state_dir)
        assert login is not None
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login.username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login.password)
        s3.create_bucket(Bucket="survivor")
        MlflowClient(settings.mlflow_url).create_experiment("survivor")

        # WHEN the emulator crashes THEN the whole cloud stops, saying why
        localstack = int(control.status(settings)["services"]["localstack"]["pid"])
        for pid in process_tree(localstack):
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not marked_processes(settings.cloud_id), timeout=60)
        assert "localstack exited" in (control.status(settings)["last_error"] or "")

        # AND the next `up` starts a clean, consistent cloud: nothing of the old registry either
        assert control.up(settings).already_running is False
        assert port_is_listening(settings.aws_port)
        assert "survivor" not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
        assert MlflowClient(settings.mlflow_url).get_experiment_by_name("survivor") is None
        # AND the tracking server's login is the one it had, and still lets its holder in
        assert read_login(settings.state_dir) == login

        # WHEN it is brought down THEN no process and no port is left
        assert control.down(settings) is True
        assert marked_processes(settings.cloud_id) == []
        assert not port_is_listening(settings.aws_port)

        # WHEN the supervisor of a new start is killed THEN every service goes with it
        supervisor = control.up(settings).pid
        assert marked_processes(settings.cloud_id)
        os.kill(supervisor, signal.SIGKILL)
        assert wait_until(lambda: not marked_processes(settings.cloud_id), timeout=30), marked_processes(
            settings.cloud_id
        )
        assert wait_until(lambda: not port_is_listening(settings.aws_port), timeout=10)
    finally:
        control.down(settings)
