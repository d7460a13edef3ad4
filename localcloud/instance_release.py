"""What deploy/arrival-boot.sh does on an instance, done by the local instance agent.

The same objects of the same release, read from S3 with the instance's own role (so an instance
whose role may not read its release fails here as on EC2), installed with the same uv commands into
the same layout, under the agent's cache instead of /opt/arrival. Only the operating system's part
differs: no dnf, and the agent supervises the process instead of systemd (localcloud/instance_agent.py).

A process started from here sees the release's wheel and its locked dependencies, and nothing of
the checkout: not its virtualenv, not its source tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from localcloud.release import INSTANCE_PYTHON, MANIFEST, parse_release_uri, requirements_name

# Marks a finished install: one interrupted half-way is removed and made again.
_COMPLETE = ".complete"


class ReleaseInstallError(RuntimeError):
    """The instance could not install its release: its user data would fail the same way on EC2."""


@dataclass(frozen=True)
class InstalledRelease:
    version: str
    site: Path  # the release's wheel, installed --no-deps
    dependencies: Path  # the virtualenv of the role's locked requirements

    def command(self, executable: str, arguments: list[str]) -> list[str]:
        return [str(self.site / "bin" / executable), *arguments]

    def environment(self, inherited: dict[str, str]) -> dict[str, str]:
        """``inherited`` without what would let the checkout's code or packages in, plus the
        release's own paths, as the systemd unit of arrival-boot.sh sets them."""
        checkout = Path(__file__).resolve().parent.parent
        foreign = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE")
        environment = {name: value for name, value in inherited.items() if name not in foreign}
        system_path = [
            entry
            for entry in inherited.get("PATH", "").split(os.pathsep)
            if entry and not Path(entry).resolve().is_relative_to(checkout)
        ]
        environment["PATH"] = os.pathsep.join(
            [str(self.site / "bin"), str(self.dependencies / "bin"), *system_path]
        )
        # The release's code, and only it: the dependencies come from the interpreter's virtualenv.
        environment["PYTHONPATH"] = str(self.site)
        environment["ARRIVAL_RELEASE_VERSION"] = self.version
        environment.pop("ARRIVAL_RELEASE_URI", None)  # the user data's, maybe unexpanded: the version says it
        return environment


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """One install at a time on this machine: several local clouds share the cache."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(s3: Any, bucket: str, key: str, destination: Path) -> None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ReleaseInstallError(f"cannot read s3://{bucket}/{key}: {code or error}") from error
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(body)


def _uv(*arguments: str) -> None:
    uv = shutil.which("uv")
    if uv is None:
        raise ReleaseInstallError("installing a release needs uv on the instance agent's PATH")
    # No bytecode at install, as in arrival-boot.sh: compiling the trainer's 18,000 files took 80 s,
    # where its first start compiles the few it imports, and writes them (the processes run without
    # PYTHONDONTWRITEBYTECODE) for every later start. No uv configuration either: the checkout's
    # pyproject.toml is not the instance's.
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VIRTUAL_ENV", "UV_COMPILE_BYTECODE")
    }
    result = subprocess.run(
        [uv, "--no-config", *arguments], capture_output=True, text=True, env=environment, check=False
    )
    if result.returncode != 0:
        raise ReleaseInstallError(f"uv {' '.join(arguments[:2])} failed: {result.stderr.strip()[-2000:]}")


def _pip(python: str, arguments: list[str]) -> list[str]:
    return ["pip", "install", "--quiet", "--python", python, *arguments]


def _once(directory: Path, steps: list[list[str]]) -> None:
    """Make ``directory`` with these uv commands unless a finished install is there already."""
    if (directory / _COMPLETE).exists():
        return
    shutil.rmtree(directory, ignore_errors=True)
    for step in steps:
        _uv(*step)
    (directory / _COMPLETE).touch()


def install_release(s3: Any, uri: str, role: str, cache: Path) -> InstalledRelease:
    """Install the release at ``uri`` for ``role`` under ``cache``, reading it with ``s3`` (a client
    with the instance's credentials); what is installed already is reused."""
    bucket, prefix = parse_release_uri(uri)
    version = prefix.rstrip("/").rsplit("/", 1)[-1]
    downloads = cache / "downloads" / version
    _download(s3, bucket, prefix + MANIFEST, downloads / MANIFEST)
    manifest = json.loads((downloads / MANIFEST).read_text())
    if manifest.get("python") != INSTANCE_PYTHON:
        raise ReleaseInstallError(
            f"release {version} is for Python {manifest.get('python')}, instances run {INSTANCE_PYTHON}"
        )
    wheel = str(manifest["wheel"])
    requirements = requirements_name(role)
    _download(s3, bucket, prefix + wheel, downloads / wheel)
    _download(s3, bucket, prefix + requirements, downloads / requirements)
    lock_digest = hashlib.sha256((downloads / requirements).read_bytes()).hexdigest()[:16]
    dependencies = cache / "deps" / f"{role}-{lock_digest}"
    site = cache / "releases" / version / role / "site"
    python = str(dependencies / "bin" / "python")
    locked = ["--require-hashes", "-r", str(downloads / requirements)]
    with _exclusive(cache / ".install.lock"):
        _once(
            dependencies,
            [["venv", "--quiet", "--python", INSTANCE_PYTHON, str(dependencies)], _pip(python, locked)],
        )
        _once(site, [_pip(python, ["--no-deps", "--target", str(site), str(downloads / wheel)])])
    return InstalledRelease(version, site, dependencies)
