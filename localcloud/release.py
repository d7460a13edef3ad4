"""A release: the exact code and locked dependencies the stack's instances run.

A release is the project's wheel, the locked requirements of each instance role (with their hashes,
exported from uv.lock), the boot script the instances' user data runs (deploy/arrival-boot.sh), and
a manifest. The deploy publishes it to ``s3://<artifacts bucket>/releases/<version>/`` before it
creates or updates the stack, whose ``ReleaseVersion`` then names it; the instances' roles may read
that version only.

Why a wheel and a lock, not a wheelhouse or images (docs/aws.md, "Releases"): the trainer's locked
dependencies are about 190 packages, 1.2 GB installed, which a wheelhouse would upload on every
deploy that changes the code; hashes in the lock pin every one of them as exactly, and instances
install them from the package index. Docker images cannot be built on a machine without a registry
of base images, so the path the instances take on AWS could never run in the tests.

The version is the project's version and a digest of everything in the release, so the same code
and lock give the same version, and publishing it again uploads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOOT_SCRIPT = PROJECT_ROOT / "deploy" / "arrival-boot.sh"
# The interpreter on the instances: Amazon Linux 2023's python3.11 package (deploy/arrival-boot.sh).
INSTANCE_PYTHON = "3.11"
RELEASES_PREFIX = "releases/"
MANIFEST = "release.json"
BOOT_SCRIPT_NAME = "arrival-boot"
# What each instance role installs: the uv.lock export that holds its imports and nothing more.
ROLE_EXPORTS = {
    "trainer": ["--no-dev"],  # the project's own dependencies: scikit-learn, MLflow, DVC...
    "server": ["--only-group", "serving-instance"],  # no scikit-learn, pandas or MLflow
}
# Fixed timestamps in the wheel, so the same code builds the same bytes and the same version.
_SOURCE_DATE_EPOCH = "315532800"


class ReleaseError(RuntimeError):
    pass


def requirements_name(role: str) -> str:
    return f"requirements-{role}.txt"


def release_uri(bucket: str, version: str) -> str:
    return f"s3://{bucket}/{RELEASES_PREFIX}{version}"


def parse_release_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/') of an s3://bucket/releases/<version> URI."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not prefix.startswith(RELEASES_PREFIX):
        raise ReleaseError(f"{uri!r} is not a release: expected s3://<bucket>/{RELEASES_PREFIX}<version>")
    return bucket, prefix.rstrip("/") + "/"


@dataclass(frozen=True)
class Release:
    version: str
    directory: Path  # every file of the release, under the names it is published with

    @property
    def files(self) -> list[Path]:
        return sorted(path for path in self.directory.iterdir() if path.is_file())


def _uv(*arguments: str, cwd: Path) -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise ReleaseError("building a release needs uv on the PATH (`make install` fetches it)")
    result = subprocess.run(
        [uv, *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH},
        check=False,
    )
    if result.returncode != 0:
        raise ReleaseError(f"uv {' '.join(arguments[:2])} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def build_release(destination: Path, project_root: Path = PROJECT_ROOT) -> Release:
    """Build the release of the project at ``project_root`` into ``destination`` (emptied first)."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="arrival-wheel-") as scratch:
        _uv("build", "--quiet", "--wheel", "--out-dir", scratch, cwd=project_root)
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise ReleaseError(f"uv build made {len(wheels)} wheels, expected one")
        wheel = destination / wheels[0].name
        shutil.copyfile(wheels[0], wheel)
    for role, selection in ROLE_EXPORTS.items():
        exported = _uv(
            "export",
            "--frozen",
            "--quiet",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "--python",
            INSTANCE_PYTHON,
            *selection,
            cwd=project_root,
        )
        (destination / requirements_name(role)).write_text(exported)
    shutil.copyfile(BOOT_SCRIPT, destination / BOOT_SCRIPT_NAME)
    digest = hashlib.sha256()
    for path in sorted(destination.iterdir()):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    version = f"{project['version']}-{digest.hexdigest()[:12]}"
    manifest = {
        "version": version,
        "python": INSTANCE_PYTHON,
        "wheel": wheel.name,
        "requirements": {role: requirements_name(role) for role in ROLE_EXPORTS},
        "boot": BOOT_SCRIPT_NAME,
    }
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Release(version, destination)


def publish_release(s3: Any, bucket: str, release: Release) -> str:
    """Upload the release unless that version is there already; its URI. The manifest goes last,
    so a release whose manifest exists is complete."""
    prefix = f"{RELEASES_PREFIX}{release.version}/"
    try:
        s3.head_object(Bucket=bucket, Key=prefix + MANIFEST)
    except ClientError:
        for path in [
            *(path for path in release.files if path.name != MANIFEST),
            release.directory / MANIFEST,
        ]:
            s3.upload_file(str(path), bucket, prefix + path.name)
    return release_uri(bucket, release.version)
