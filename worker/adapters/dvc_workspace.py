"""The only place arrival drives DVC: scratch workspaces (never a checkout), the S3 remote, repro.

DVC's Python API resolves stage paths against the working directory, so each call runs inside the
workspace (contextlib.chdir). The worker runs one training at a time, so changing the process's
directory for the call is safe; it saves a `dvc` process start per step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dvc.repo import Repo

REMOTE = "storage"


def init(workspace: Path, remote_url: str) -> None:
    """A DVC workspace without Git, so concurrent jobs and people's checkouts never collide. The remote
    goes to config.local, which is never committed; its endpoint follows AWS_ENDPOINT_URL."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with contextlib.chdir(workspace):
        repo = Repo.init(".", no_scm=True)
        with repo.config.edit("local") as config:
            remote: dict[str, str] = {"url": remote_url}
            if endpoint := os.environ.get("AWS_ENDPOINT_URL"):
                remote["endpointurl"] = endpoint
            config["remote"][REMOTE] = remote
            config["core"]["remote"] = REMOTE
        repo.close()


def track(workspace: Path, path: str) -> None:
    with contextlib.chdir(workspace), Repo(".") as repo:
        repo.add(path)


def reproduce(workspace: Path, *, force: bool = False) -> None:
    with contextlib.chdir(workspace), Repo(".") as repo:
        repo.reproduce(force=force)


def push(workspace: Path) -> None:
    with contextlib.chdir(workspace), Repo(".") as repo:
        repo.push()


def pull(workspace: Path) -> None:
    with contextlib.chdir(workspace), Repo(".") as repo:
        repo.pull()
