"""Gets uv onto a machine that has only `python3`, for `make` and `.ci/run`.

`python3 -m pip install uv` fails on Debian 12 and Ubuntu 24.04 (PEP 668: the system Python is
"externally managed"), and their `python3` may have neither pip nor venv. So this script uses the
standard library only: it fetches uv's wheel for this platform from PyPI (the one index every
machine that installs the project reaches), checks its SHA-256 against PyPI's, and takes the `uv`
binary out of it. Run as a script; it imports nothing from the project.

    python3 localcloud/bootstrap_uv.py ~/.cache/arrival/bootstrap/bin
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

UV_VERSION = "0.13.9"
INDEX = os.environ.get("ARRIVAL_PYPI_JSON_URL", "https://pypi.org/pypi")

# (sys.platform, machine) -> what the wheel's platform tag holds.
_PLATFORM_TAGS = {
    ("linux", "x86_64"): ("manylinux", "x86_64"),
    ("linux", "aarch64"): ("manylinux", "aarch64"),
    ("darwin", "x86_64"): ("macosx", "x86_64"),
    ("darwin", "arm64"): ("macosx", "arm64"),
}


class BootstrapError(RuntimeError):
    pass


def pick_wheel(files: list[dict[str, Any]], system: str, machine: str) -> dict[str, Any]:
    """Of a release's files (as PyPI's JSON API lists them), the wheel for this platform."""
    wanted = _PLATFORM_TAGS.get((system, machine))
    if wanted is None:
        raise BootstrapError(
            f"no uv wheel known for {system}/{machine}: install uv yourself (docs.astral.sh/uv)"
        )
    family, arch = wanted
    for file in files:
        name = file["filename"]
        if name.endswith(".whl") and family in name and name.endswith(f"{arch}.whl") and "musl" not in name:
            return file
    raise BootstrapError(f"uv {UV_VERSION} has no {family} {arch} wheel on the index")


def extract_uv(wheel: bytes, expected_sha256: str, destination: Path) -> Path:
    digest = hashlib.sha256(wheel).hexdigest()
    if digest != expected_sha256:
        raise BootstrapError(f"the uv wheel's SHA-256 is {digest}, not the index's {expected_sha256}")
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise BootstrapError("the uv wheel holds no uv binary")
        destination.mkdir(parents=True, exist_ok=True)
        target = destination / "uv"
        scratch = target.with_suffix(".partial")
        scratch.write_bytes(archive.read(member))
    scratch.chmod(scratch.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    scratch.replace(target)  # a second, concurrent run never sees half a binary
    return target


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310  # an https index URL
        return bytes(response.read())


def main(destination: str) -> int:
    target = Path(destination).expanduser() / "uv"
    if target.exists():
        return 0
    try:
        # The project's document lists every release's files (some mirrors serve no per-version one).
        document_url = f"{INDEX}/uv/json"
        files = json.loads(_get(document_url))["releases"].get(UV_VERSION, [])
        file = pick_wheel(files, sys.platform, platform.machine())
        # Mirrors may give file URLs relative to the document.
        wheel_url = urllib.parse.urljoin(document_url, file["url"])
        extract_uv(_get(wheel_url), file["digests"]["sha256"], target.parent)
    except (BootstrapError, OSError, ValueError) as error:
        sys.stderr.write(f"error: could not get uv ({error}); install it: https://docs.astral.sh/uv/\n")
        return 1
    sys.stdout.write(f"uv {UV_VERSION} installed at {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/arrival/bootstrap/bin"))
