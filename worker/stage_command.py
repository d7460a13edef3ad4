"""`arrival-train`, the command every stage in dvc.yaml runs.

On a worker, a stage server (`worker.stage_server`) has the stages' imports loaded already, and this
command is a thin client of it: it hands over its arguments, working directory, environment and its
stdin/stdout/stderr, and exits with the stage's exit status, so DVC sees what it would see from a stage
run in this process. Without a server (a data scientist's `dvc repro`, `arrival reproduce`) the stage
runs here. Either way the code that runs is `worker.stages`.

Only the standard library's lighter modules are imported before that choice: this process starts
once per stage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from multiprocessing.connection import Client, Connection
from multiprocessing.reduction import send_handle
from types import FrameType

ADDRESS_VARIABLE = "ARRIVAL_STAGE_SERVER"
KEY_VARIABLE = "ARRIVAL_STAGE_SERVER_KEY"
STANDARD_STREAMS = (0, 1, 2)


def main() -> None:
    address, key = os.environ.get(ADDRESS_VARIABLE), os.environ.get(KEY_VARIABLE)
    if address and key:
        try:
            connection = Client(address, family="AF_UNIX", authkey=bytes.fromhex(key))
        except OSError as error:
            # A server that is gone costs speed, not correctness: run the stage here instead.
            sys.stderr.write(f"arrival-train: stage server unavailable ({error}); running in-process\n")
        else:
            sys.exit(_run_remotely(connection))
    from worker.stages import app

    app(prog_name="arrival-train")


def _run_remotely(connection: Connection) -> int:
    with connection:
        working_directory = os.getcwd()  # noqa: PTH109  # pathlib would cost this short-lived process an import
        connection.send({"argv": sys.argv[1:], "cwd": working_directory, "environ": dict(os.environ)})
        for descriptor in STANDARD_STREAMS:
            send_handle(connection, descriptor, os.getpid())
        try:
            stage_pid: int = connection.recv()
        except EOFError:
            # Killed before the server could even say which process runs it.
            sys.stderr.write("arrival-train: the stage process ended without a status\n")
            return 1

        def forward(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stage_pid, signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, forward)
        try:
            status: int = connection.recv()
        except EOFError:
            # The stage died without reporting (killed, or out of memory): a failed stage for DVC.
            sys.stderr.write(f"arrival-train: stage process {stage_pid} ended without a status\n")
            return 1
        return status
