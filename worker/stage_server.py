"""The warm stage server a worker keeps for `arrival-train` (see `worker.stage_command`).

DVC starts each stage's command as a new process, and each would pay ~1-3 s of imports (pandas,
scikit-learn, skl2onnx, onnxruntime) before ~0.5 s of work on a small dataset. The server imports all
of that once and forks a child per stage, which takes over the client's streams, directory and
environment and runs the stage.

Why our own code: multiprocessing's forkserver serves only the process that started it, and here the
requests come from processes DVC starts through a shell. What this adds to the standard library's
`multiprocessing.connection` (an authenticated socket) and `reduction` (passing file descriptors) is
the request and the fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from multiprocessing.reduction import recv_handle
from pathlib import Path
from typing import Any

from worker.stage_command import ADDRESS_VARIABLE, KEY_VARIABLE, STANDARD_STREAMS

# What the stages import lazily; the server imports it before its first fork.
PRELOAD = [
    "pandas",
    "pyarrow.parquet",
    "joblib",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.pipeline",
    "skl2onnx",
    "onnxruntime",
    "boto3",
    "worker.stages",
    "worker.training",
    "worker.onnx_export",
    "worker.splits",
    "common.adapters.s3",
]
_PR_SET_PDEATHSIG = 1


def serve(address: str, key: bytes) -> None:
    """Accept stage requests until the worker that started this server exits."""
    _die_with_parent(signal.SIGTERM)
    # Listen before importing, so a stage that asks early waits in the backlog instead of failing.
    with Listener(address, family="AF_UNIX", authkey=key) as listener:
        for module in PRELOAD:
            importlib.import_module(module)
        while True:
            connection = listener.accept()
            _reap_finished_children()
            request = connection.recv()
            streams = [recv_handle(connection) for _ in STANDARD_STREAMS]
            pid = os.fork()
            if pid == 0:
                listener.close()
                _run_stage(connection, request, streams)
            for descriptor in streams:
                os.close(descriptor)
            connection.close()


def _run_stage(connection: Connection, request: dict[str, Any], streams: list[int]) -> None:
    """In the forked child: become the stage process the client stands for, run it, report."""
    status = 1
    try:
        _die_with_parent(signal.SIGKILL)
        for target, descriptor in zip(STANDARD_STREAMS, streams, strict=True):
            os.dup2(descriptor, target)
            os.close(descriptor)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environ"])
        connection.send(os.getpid())
        from worker.stages import app

        try:
            app(args=request["argv"], prog_name="arrival-train")
            status = 0
        except SystemExit as exit_:
            status = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
            connection.send(status)
        os._exit(status)


def _die_with_parent(signum: int) -> None:
    """The kernel signals this process when its parent dies, even by SIGKILL: no server outlives its
    worker, and no stage outlives its server."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _reap_finished_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


@dataclass(frozen=True)
class StageServer:
    pid: int

    def abort_stages(self) -> int:
        """End every stage running now (each is a child of the server); their commands fail, and so
        does the `dvc repro` that started them. Returns how many were signalled."""
        signalled = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                # Fields after the command name (which may hold spaces): state, then the parent's pid.
                state, parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if int(parent) == self.pid and state != "Z":  # a zombie has ended already
                    os.kill(int(proc.name), signal.SIGTERM)
                    signalled += 1
        return signalled


@contextlib.contextmanager
def stage_server() -> Iterator[StageServer]:
    """Run a stage server for as long as the block runs; stages started inside it use the server."""
    key = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="arrival-stages-") as private:  # mode 0700
        address = str(Path(private) / "server.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "worker.stage_server", address],
            env={**os.environ, KEY_VARIABLE: key.hex()},
        )
        previous = {name: os.environ.get(name) for name in (ADDRESS_VARIABLE, KEY_VARIABLE)}
        os.environ.update({ADDRESS_VARIABLE: address, KEY_VARIABLE: key.hex()})
        _wait_for_socket(Path(address), server)
        try:
            yield StageServer(server.pid)
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            server.terminate()
            server.wait()


def _wait_for_socket(path: Path, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the stage server did not start (exit status {server.poll()})")
        time.sleep(0.01)


if __name__ == "__main__":
    serve(sys.argv[1], bytes.fromhex(os.environ.pop(KEY_VARIABLE)))
