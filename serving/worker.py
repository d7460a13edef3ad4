"""One of `arrival-serve`'s worker processes: the app factories uvicorn imports in each (serving/main.py)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

from fastapi import FastAPI

from serving.app import create_app
from serving.main import LOG_FORMAT, api_key_of
from serving.settings import ServerSettings, ServingSettings

_PR_SET_PDEATHSIG = 1


def keyed_app() -> FastAPI:
    """The served app, requiring the stack's API key."""
    _become_a_worker()
    # Read afresh, not from the cached settings: arrival-serve set the reload signal's variable after
    # reading them, and with one worker this is the same process.
    settings = ServerSettings()  # type: ignore[call-arg]  # filled from the environment
    return create_app(settings, mode="server", api_key=api_key_of(settings))


def unchecked_app() -> FastAPI:
    """The same app checking no key (benchmarks/serving.py, to measure what the check costs)."""
    _become_a_worker()
    settings = ServingSettings()  # type: ignore[call-arg]  # filled from the environment
    return create_app(settings, mode="server", api_key=None)


def _become_a_worker() -> None:
    # A spawned process starts with no logging set up: the app's own lines (loads, reload failures)
    # would be lost.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    _die_with_the_supervisor()


def _die_with_the_supervisor() -> None:
    """A worker whose supervisor died (killed, or crashed) would keep the port and answer with models
    nobody tells it to reload, and the supervisor started again could not bind: the kernel ends it
    with its parent instead (Linux; elsewhere the supervisor's own end stops its workers). At once, by
    SIGKILL: a worker told SIGTERM shuts down gracefully, and meanwhile still answered /ready on its
    open connections, so a client that a restarted server's health check let through met a worker
    that then vanished (tests/e2e/test_faults.py's restart). A supervisor that stops cleanly ends its
    workers itself first, gracefully. With one worker, uvicorn runs the app in arrival-serve's own
    process, which has no supervisor to die with."""
    if not sys.platform.startswith("linux") or multiprocessing.parent_process() is None:
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
