"""Finding a Python interpreter of a given minimum version on a machine that may not have it on PATH.

LocalStack 2026.3.0 needs Python >= 3.13 (its code uses PEP 695 generics and
`warnings.deprecated`), while the project itself runs on 3.11+. Developers often have the newer
Python only under pyenv or uv, not as ``python3.13``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path


class InterpreterNotFoundError(RuntimeError):
    pass


def _version_of(python: Path) -> tuple[int, int] | None:
    try:
        output = subprocess.run(
            [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = output.split()
    return int(major), int(minor)


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _candidates(minimum: tuple[int, int]) -> list[Path]:
    found: list[Path] = []
    for minor in range(minimum[1] + 6, minimum[1] - 1, -1):
        name = f"python{minimum[0]}.{minor}"
        if on_path := shutil.which(name):
            found.append(Path(on_path))
        found.extend(sorted(_pyenv_root().glob(f"versions/{minimum[0]}.{minor}*/bin/{name}"), reverse=True))
    uv = shutil.which("uv")
    if uv:
        result = subprocess.run(
            [uv, "python", "find", f">={minimum[0]}.{minimum[1]}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            found.append(Path(result.stdout.strip()))
    return found


def install_with_uv(wanted: str) -> bool:
    """`uv python install`: uv fetches a standalone build (from GitHub), where the network allows."""
    uv = shutil.which("uv")
    if uv is None:
        return False
    try:
        result = subprocess.run(
            [uv, "python", "install", wanted], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _first_good(minimum: tuple[int, int]) -> Path | None:
    for candidate in _candidates(minimum):
        version = _version_of(candidate)
        if version is not None and version >= minimum:
            return candidate
    return None


def find_python(
    minimum: tuple[int, int], explicit: str | None = None, install: Callable[[str], bool] | None = None
) -> Path:
    """The newest interpreter >= minimum: the explicit one if given, else from PATH, pyenv or uv;
    if none, `install(version)` may get one (see `install_with_uv`) before giving up."""
    wanted = f"{minimum[0]}.{minimum[1]}"
    if explicit:
        version = _version_of(Path(explicit))
        if version is None or version < minimum:
            raise InterpreterNotFoundError(
                f"ARRIVAL_LOCALSTACK_PYTHON={explicit} is not a Python >= {wanted}: point it at one "
                f"(`uv python install {wanted}`, then `uv python find {wanted}`), or unset it"
            )
        return Path(explicit)
    if found := _first_good(minimum):
        return found
    if install is not None and install(wanted) and (found := _first_good(minimum)):
        return found
    how = (
        f"`uv python install {wanted}` did not get one here (offline?): install Python {wanted} with "
        f"your package manager or `pyenv install {wanted}`"
        if install is not None
        else f"Install one with `uv python install {wanted}` or `pyenv install {wanted}`"
    )
    raise InterpreterNotFoundError(
        f"LocalStack needs Python >= {wanted}, and none was found on PATH (python{wanted}..), "
        f"under pyenv ({_pyenv_root()}/versions) or by `uv python find`. {how}, "
        f"or point ARRIVAL_LOCALSTACK_PYTHON at it."
    )
