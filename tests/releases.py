"""A second release of the checkout, for the tests and benchmarks that roll a stack to a new one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from localcloud.deploy import artifacts_bucket
from localcloud.release import PROJECT_ROOT, Release, build_release, publish_release


def build_changed_release(scratch: Path, note: str) -> Release:
    """The checkout's release with ``note`` added as a comment to one module: the same code and
    locks, so instances reuse their installed dependencies, under another version."""
    copy = scratch / "project"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        source = PROJECT_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    changed = copy / "serving" / "__init__.py"
    changed.write_text(changed.read_text() + f"# {note}\n")
    return build_release(scratch / "release", project_root=copy)


def publish_to_deploy_bucket(session: Any, release: Release) -> str:
    """Publish ``release`` where `arrival deploy` publishes the checkout's, for a deploy that names
    it with ``ReleaseVersion``; its version."""
    account = session.client("sts").get_caller_identity()["Account"]
    publish_release(session.client("s3"), artifacts_bucket(account, session.region_name), release)
    return release.version
