"""Interpreter discovery and dependency virtualenvs for process-based Lambda functions.

Each function runs under a virtualenv that contains *only* the packages declared in the
function's own ``requirements.txt`` (and those of its layers). Virtualenvs are shared between
function versions through a content-addressed cache: the key is a hash of the interpreter and of
the requirement files' content, so redeploying unchanged requirements costs nothing.

This module must not import localstack: it is also usable (and testable) on its own.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

LOG = logging.getLogger(__name__)

# The bootstrap uses syntax and stdlib features of 3.12, so that is the oldest interpreter we fall
# back to when the exact runtime version is not installed.
MIN_FALLBACK_VERSION: tuple[int, int] = (3, 12)
# Highest minor version probed when looking for a fallback interpreter.
_MAX_PROBED_MINOR = 20

# Installing packages may hit the network; a stuck resolver must not block function creation forever.
UV_INSTALL_TIMEOUT_SECONDS = 900

_RUNTIME_RE = re.compile(r"^python(\d+)\.(\d+)$")

# Prints what we need to know about a candidate interpreter. ``_base_executable`` resolves a
# virtualenv's python to the interpreter it was created from, so we never stack venvs on venvs.
_PROBE_SCRIPT = (
    "import json, sys; print(json.dumps({"
    "'executable': getattr(sys, '_base_executable', None) or sys.executable, "
    "'version': list(sys.version_info[:3]), "
    "'implementation': sys.implementation.name}))"
)


class VenvBuildError(RuntimeError):
    """Raised when the dependency virtualenv of a function cannot be built."""


class InterpreterNotFoundError(RuntimeError):
    """Raised when no usable Python interpreter exists for a runtime."""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    version: tuple[int, int, int]

    @property
    def minor(self) -> str:
        """``"3.12"``-style version string."""
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full_version(self) -> str:
        return ".".join(str(part) for part in self.version)


def parse_runtime(runtime: str) -> tuple[int, int]:
    """``"python3.12"`` -> ``(3, 12)``; raises ValueError for non-Python runtimes."""
    match = _RUNTIME_RE.match(runtime or "")
    if not match:
        raise ValueError(f"Runtime {runtime!r} is not a Python runtime")
    return int(match.group(1)), int(match.group(2))


def _probe(candidate: str) -> Interpreter | None:
    """Run a candidate interpreter to learn its real path and version.

    Candidates must be executed rather than trusted by name: pyenv shims on PATH exist for every
    installed version but fail at run time unless that version is activated.
    """
    try:
        proc = subprocess.run(
            [candidate, "-I", "-c", _PROBE_SCRIPT],
            capture_output=True,
            text=True,
            timeout=15,
            env=_probe_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if info.get("implementation") != "cpython":
        return None
    major, minor, micro = (int(part) for part in info["version"])
    return Interpreter(path=info["executable"], version=(major, minor, micro))


def _probe_env() -> dict[str, str]:
    # -I already ignores PYTHON* variables; the rest of the environment is needed by pyenv shims.
    return dict(os.environ)


def _pyenv_root() -> Path:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                return Path(out)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return Path.home() / ".pyenv"


def _version_sort_key(path: str) -> tuple[int, ...]:
    # Newest patch release first: "3.12.10" must sort above "3.12.9".
    name = Path(path).parts[-3] if len(Path(path).parts) >= 3 else path
    return tuple(int(part) for part in re.findall(r"\d+", name)[:3])


def _candidates(major: int, minor: int) -> list[str]:
    """Candidate executables for one minor version, in the documented search order."""
    found: list[str] = []
    on_path = shutil.which(f"python{major}.{minor}")
    if on_path:
        found.append(on_path)
    matches = (_pyenv_root() / "versions").glob(f"{major}.{minor}*/bin/python{major}.{minor}")
    found.extend(sorted((str(path) for path in matches), key=_version_sort_key, reverse=True))
    return found


def _uv_find(uv: str | None, major: int, minor: int) -> str | None:
    if not uv:
        return None
    try:
        proc = subprocess.run(
            [uv, "python", "find", f"{major}.{minor}"],
            capture_output=True,
            text=True,
            timeout=30,
            # Never let a lookup turn into a download of a managed interpreter.
            env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and path else None


def _find_exact(major: int, minor: int, uv: str | None) -> Interpreter | None:
    for candidate in _candidates(major, minor):
        interpreter = _probe(candidate)
        if interpreter and interpreter.version[:2] == (major, minor):
            return interpreter
    uv_path = _uv_find(uv, major, minor)
    if uv_path:
        interpreter = _probe(uv_path)
        if interpreter and interpreter.version[:2] == (major, minor):
            return interpreter
    return None


_INTERPRETER_CACHE: dict[tuple[int, int], Interpreter] = {}


def find_interpreter(runtime: str, uv: str | None = None) -> Interpreter:
    """Find the interpreter for a Lambda runtime such as ``python3.12``.

    Search order: ``python3.X`` on PATH, then pyenv's ``versions/3.X*``, then ``uv python find``.
    Falls back to the closest installed version >= 3.12 (with a warning) when the exact one is
    missing. Results are cached for the lifetime of the process.
    """
    wanted = parse_runtime(runtime)
    if wanted in _INTERPRETER_CACHE:
        return _INTERPRETER_CACHE[wanted]

    interpreter = _find_exact(*wanted, uv)
    if interpreter is None:
        available: list[Interpreter] = []
        for minor in range(MIN_FALLBACK_VERSION[1], _MAX_PROBED_MINOR + 1):
            if (3, minor) == wanted:
                continue
            found = _find_exact(3, minor, uv)
            if found:
                available.append(found)
        if not available:
            raise InterpreterNotFoundError(
                f"No Python interpreter found for runtime {runtime} (searched PATH, "
                f"{_pyenv_root()}/versions and 'uv python find'), and no fallback "
                f">= {MIN_FALLBACK_VERSION[0]}.{MIN_FALLBACK_VERSION[1]} is installed"
            )
        # Closest minor version wins; on a tie prefer the newer one (it can run more code).
        interpreter = min(available, key=lambda i: (abs(i.version[1] - wanted[1]), -i.version[1]))
        LOG.warning(
            "Python %d.%d for runtime %s is not installed (searched PATH, pyenv and uv); "
            "falling back to Python %s at %s",
            wanted[0],
            wanted[1],
            runtime,
            interpreter.full_version,
            interpreter.path,
        )
    else:
        LOG.debug(
            "Using Python %s at %s for runtime %s",
            interpreter.full_version,
            interpreter.path,
            runtime,
        )
    _INTERPRETER_CACHE[wanted] = interpreter
    return interpreter


def find_uv() -> str:
    """The uv binary: ``$ARRIVAL_UV`` if set, else ``uv`` on PATH."""
    uv = os.environ.get("ARRIVAL_UV") or shutil.which("uv")
    if not uv:
        raise VenvBuildError("uv not found: set ARRIVAL_UV to the uv binary or put uv on LocalStack's PATH")
    return uv


def requirement_files(code_dir: Path, layer_dirs: list[Path]) -> list[Path]:
    """The function's declared requirements: its own requirements.txt, then each layer's."""
    files = []
    for directory in [code_dir, *layer_dirs]:
        candidate = directory / "requirements.txt"
        if candidate.is_file():
            files.append(candidate)
    return files


def venv_key(interpreter: Interpreter, req_files: list[Path]) -> str:
    """Content hash identifying a virtualenv: interpreter + requirement contents (in order)."""
    digest = hashlib.sha256()
    digest.update(f"arrival-venv-v1\0{interpreter.full_version}\0{interpreter.path}\0".encode())
    for req in req_files:
        digest.update(b"\0req\0")
        digest.update(req.read_bytes())
    return digest.hexdigest()[:32]


def site_packages(venv: Path, interpreter: Interpreter) -> Path:
    return venv / "lib" / f"python{interpreter.minor}" / "site-packages"


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    # Compiled bytecode makes cold starts much faster, and the functions' own runs cannot write it
    # when PYTHONDONTWRITEBYTECODE is set in their environment.
    env["UV_COMPILE_BYTECODE"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    # LocalStack may itself run inside an activated virtualenv; uv must target only the new venv.
    env.pop("VIRTUAL_ENV", None)
    env.pop("CONDA_PREFIX", None)
    return env


def _run_uv(args: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=_uv_env(),
            capture_output=True,
            text=True,
            timeout=UV_INSTALL_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise VenvBuildError(f"'{' '.join(args)}' timed out after {e.timeout} s") from e
    except OSError as e:
        raise VenvBuildError(f"could not run {args[0]}: {e}") from e
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout or "").strip()
        raise VenvBuildError(
            f"'{' '.join(args[:3])} ...' failed with exit status {proc.returncode}: {output[-2000:]}"
        )
    if proc.stderr.strip():
        LOG.debug("uv output: %s", proc.stderr.strip())


def ensure_venv(
    interpreter: Interpreter,
    req_files: list[Path],
    cache_dir: Path,
    uv: str,
    label: str = "",
) -> Path:
    """Return the cached virtualenv for these requirements, building it first if needed.

    The venv is built in a temporary directory and renamed into place, so a reader never sees a
    half-installed venv; an exclusive flock on ``<key>.lock`` makes concurrent builders of the same
    key (threads or processes) wait for the first one instead of racing.
    """
    key = venv_key(interpreter, req_files)
    target = cache_dir / key
    if target.is_dir():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f"{key}.lock"
    with lock_path.open("a+") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            if target.is_dir():
                return target
            started = time.monotonic()
            LOG.info(
                "Building virtualenv %s for %s (Python %s, requirements: %s)",
                key,
                label or "function",
                interpreter.full_version,
                ", ".join(str(r) for r in req_files) or "none",
            )
            build_dir = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache_dir))
            try:
                # --relocatable: console scripts must keep working after the rename below.
                _run_uv(
                    [
                        uv,
                        "venv",
                        "--quiet",
                        "--no-project",
                        "--no-config",
                        "--relocatable",
                        "--allow-existing",
                        "-p",
                        interpreter.path,
                        str(build_dir),
                    ],
                    cwd=cache_dir,
                )
                if req_files:
                    args = [
                        uv,
                        "pip",
                        "install",
                        "--quiet",
                        "--no-config",
                        "-p",
                        str(build_dir / "bin" / "python"),
                    ]
                    for req in req_files:
                        args += ["-r", str(req)]
                    # Relative paths inside a requirements file are resolved against the cwd, which
                    # for the function's own file is naturally its code directory.
                    _run_uv(args, cwd=req_files[0].parent)
                (build_dir / "arrival-venv.json").write_text(
                    json.dumps(
                        {
                            "python": interpreter.path,
                            "python_version": interpreter.full_version,
                            "requirements": [str(r) for r in req_files],
                            "built_for": label,
                            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        },
                        indent=2,
                    )
                )
                build_dir.rename(target)
            except BaseException:
                shutil.rmtree(build_dir, ignore_errors=True)
                raise
            LOG.info("Built virtualenv %s in %.1f s", key, time.monotonic() - started)
            return target
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
