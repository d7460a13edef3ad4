"""`arrival-train` through a worker's stage server behaves as the stage run in its own process: same
outputs, same exit status, its output on the caller's streams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import datasets
from tests.helpers import eventually
from worker.stage_command import ADDRESS_VARIABLE, KEY_VARIABLE
from worker.stage_server import StageServer, stage_server

ARRIVAL_TRAIN = str(Path(sys.executable).parent / "arrival-train")  # this environment's own


def _workspace(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "contract.yaml").write_bytes(datasets.contract_yaml("iris", "iris"))
    (root / "params.yaml").write_text(yaml.safe_dump({"holdout_fraction": 0.2, "estimator_params": {}}))
    frame = datasets.iris_frame(300)
    frame.iloc[:240].to_parquet(root / "data" / "train.parquet", index=False)
    frame.iloc[240:].to_parquet(root / "data" / "holdout.parquet", index=False)
    return root


def _stage(name: str, workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # our own console script
        [ARRIVAL_TRAIN, name], cwd=workspace, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def server() -> Iterator[StageServer]:
    with stage_server() as running:
        yield running


@pytest.mark.usefixtures("server")
def test_stages_through_the_server_give_what_they_give_in_their_own_process(tmp_path: Path) -> None:
    served = _workspace(tmp_path / "served")
    for name in ("train", "evaluate"):
        result = _stage(name, served)
        assert result.returncode == 0, result.stderr
    assert "trained random_forest on 240 rows" in _stage("train", served).stdout
    address = os.environ.pop(ADDRESS_VARIABLE)
    try:
        alone = _workspace(tmp_path / "alone")
        for name in ("train", "evaluate"):
            assert _stage(name, alone).returncode == 0
    finally:
        os.environ[ADDRESS_VARIABLE] = address
    assert json.loads((served / "metrics.json").read_text()) == json.loads(
        (alone / "metrics.json").read_text()
    )
    assert (served / "model" / "model.onnx").read_bytes() == (alone / "model" / "model.onnx").read_bytes()


@pytest.mark.usefixtures("server")
def test_a_failing_stage_fails_the_command_with_its_error(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    (workspace / "data" / "train.parquet").unlink()

    result = _stage("train", workspace)

    assert result.returncode != 0
    assert "train.parquet" in result.stderr


@pytest.mark.usefixtures("server")
def test_a_stage_killed_in_the_server_fails_the_command(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    # A stage that never ends: `evaluate` waits on a FIFO where the model should be.
    (workspace / "model").mkdir()
    os.mkfifo(workspace / "model" / "model.joblib")
    command = subprocess.Popen([ARRIVAL_TRAIN, "evaluate"], cwd=workspace, stderr=subprocess.PIPE, text=True)
    stage_pid = _stage_child_of(command.pid)
    os.kill(stage_pid, signal.SIGKILL)
    _, stderr = command.communicate(timeout=30)
    assert command.returncode == 1
    assert "ended without a status" in stderr


def test_aborting_ends_the_running_stages_and_fails_their_commands(
    server: StageServer, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path)
    (workspace / "model").mkdir()
    os.mkfifo(workspace / "model" / "model.joblib")  # `evaluate` blocks here until it is ended
    command = subprocess.Popen([ARRIVAL_TRAIN, "evaluate"], cwd=workspace, stderr=subprocess.PIPE, text=True)
    _stage_child_of(command.pid)

    assert server.abort_stages() == 1

    command.communicate(timeout=30)
    assert command.returncode != 0
    assert server.abort_stages() == 0  # nothing left running, and the server still serves
    assert _stage("train", _workspace(tmp_path / "after")).returncode == 0


def _stage_child_of(client_pid: int) -> int:
    """The forked stage process serving this client: it has the client's working directory and is
    not the client itself."""
    client_cwd = Path(f"/proc/{client_pid}/cwd").readlink()

    def find() -> int | None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == client_pid:
                continue
            try:
                served = b"stage_server" in (proc / "cmdline").read_bytes()
                if served and (proc / "cwd").readlink() == client_cwd:
                    return int(proc.name)
            except OSError:
                continue
        return None

    return eventually(find, timeout=30, interval=0.05, what="the forked stage process")


def test_without_a_server_the_stage_runs_in_its_own_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADDRESS_VARIABLE, str(tmp_path / "gone.sock"))
    monkeypatch.setenv(KEY_VARIABLE, "00")
    workspace = _workspace(tmp_path / "workspace")

    result = _stage("train", workspace)

    assert result.returncode == 0, result.stderr
    assert "stage server unavailable" in result.stderr
    assert (workspace / "model" / "model.joblib").exists()


def test_a_stage_killed_before_it_reported_its_pid_fails_the_command(tmp_path: Path) -> None:
    # GIVEN a server whose stage dies before it says which process runs it: the connection closes
    # right after the request (the race a SIGKILL to a freshly forked stage loses)
    import threading
    from multiprocessing.connection import Listener
    from multiprocessing.reduction import recv_handle

    key = os.urandom(16)
    address = str(tmp_path / "server.sock")
    with Listener(address, family="AF_UNIX", authkey=key) as listener:

        def serve_and_die() -> None:
            with listener.accept() as connection:
                connection.recv()
                for _ in range(3):
                    os.close(recv_handle(connection))

        server = threading.Thread(target=serve_and_die, daemon=True)
        server.start()

        # WHEN a stage command is handed to it
        command = subprocess.run(
            [ARRIVAL_TRAIN, "evaluate"],
            cwd=tmp_path,
            env={**os.environ, ADDRESS_VARIABLE: address, KEY_VARIABLE: key.hex()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        server.join(timeout=10)

    # THEN the command fails as DVC expects of a failed stage, saying why, without a traceback
    assert command.returncode == 1
    assert "ended without a status" in command.stderr
    assert "Traceback" not in command.stderr
