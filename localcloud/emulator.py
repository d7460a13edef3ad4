"""LocalStack as a service of the supervisor: its own virtualenv, its command line and its settings.

LocalStack pins its own boto3, which conflicts with ours, so it lives in a virtualenv of its own,
like a database server, built from the constraints committed beside this file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.interpreters import find_python, install_with_uv
from localcloud.processes import CLOUD_ID_VARIABLE
from localcloud.settings import LocalCloudSettings

LOCALSTACK_VERSION = "2026.3.0"
CONSTRAINTS = Path(__file__).with_name("localstack-constraints.txt")
EXECUTOR_PACKAGE = Path(__file__).with_name("lambda_executor")
EXECUTOR_NAME = "arrival-process"


@dataclass(frozen=True)
class Service:
    """A long-running process the supervisor owns. Without a health URL, it is healthy once it has
    stayed up for a moment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str | None
    ports: list[int] = field(default_factory=list)
    before_start: Callable[[], None] | None = None
    # Started again when it exits, instead of taking the local cloud down: only for a service whose
    # state lives outside its process (MLflow keeps runs in SQLite, artifacts in S3).
    restart_on_exit: bool = False


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to build LocalStack's virtualenv: `pip install uv`")
    return uv


def _executor_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(EXECUTOR_PACKAGE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".toml", ".json"}:
            digest.update(path.relative_to(EXECUTOR_PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_virtualenv(settings: LocalCloudSettings, say: object = None) -> Path:
    """Create or update LocalStack's virtualenv; returns its Python. Cheap when nothing changed."""

    def install(version: str) -> bool:
        if callable(say):
            say(f"no Python >= {version} for LocalStack here: installing one (`uv python install {version}`)")
        return install_with_uv(version)

    python = find_python((3, 13), settings.localstack_python, install=install)
    venv = settings.cache_dir / f"localstack-{LOCALSTACK_VERSION}"
    venv_python = venv / "bin" / "python"
    wanted_stamp = "\n".join(
        [str(python), hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest(), _executor_fingerprint()]
    )
    stamp = venv / "arrival-stamp"
    if stamp.is_file() and stamp.read_text() == wanted_stamp and venv_python.exists():
        return venv_python
    if callable(say):
        say(f"building LocalStack's virtualenv in {venv} with {python} (first run only)")
    uv = _uv()
    env = {**os.environ, "UV_COMPILE_BYTECODE": "1"}
    if not venv_python.exists():
        subprocess.run([uv, "venv", "-q", "--clear", "-p", str(python), str(venv)], check=True, env=env)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "-p",
            str(venv_python),
            f"localstack-core[runtime]=={LOCALSTACK_VERSION}",
            "-c",
            str(CONSTRAINTS),
        ],
        check=True,
        env=env,
    )
    # --no-deps: the executor uses only the standard library and LocalStack itself.
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--reinstall-package",
            "arrival-lambda-executor",
            "-p",
            str(venv_python),
            str(EXECUTOR_PACKAGE),
        ],
        check=True,
        env=env,
    )
    stamp.write_text(wanted_stamp)
    return venv_python


def localstack_service(settings: LocalCloudSettings, venv_python: Path) -> Service:
    port = settings.aws_port
    state = settings.state_dir / "localstack"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "LOCALSTACK_"))},
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        # Returned URLs (queue URLs, presigned URLs) must resolve offline.
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "SQS_ENDPOINT_STRATEGY": "path",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "FILESYSTEM_ROOT": str(state),
        # LocalStack takes itself for a container where /.dockerenv exists (as on many CI hosts) and
        # then ignores FILESYSTEM_ROOT, putting its state under the temp dir, which it empties at
        # start. A temp dir per cloud keeps two clouds (a person's and the tests') apart.
        "TMPDIR": str(state / "tmp"),
        "LOCALSTACK_VOLUME_DIR": str(state / "volume"),
        "LAMBDA_RUNTIME_EXECUTOR": EXECUTOR_NAME,
        # Lambda's SQS pollers on AWS long-poll without pause; LocalStack's back off up to 10 s after
        # an empty poll, which showed up as 1-7 s of "event delivery" in the chain benchmark.
        "LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_EMPTY_POLL_SEC": "1",
        # Its poller also waits this long after each batch it hands over (default 1 s), and hands
        # over one batch at a time: with batches of one file, 200 uploads queued for minutes (the
        # load soak), where Lambda on AWS runs up to MaximumConcurrency batches at once.
        "LAMBDA_EVENT_SOURCE_MAPPING_POLL_INTERVAL_SEC": "0.05",
        # SQS reports its queues' metrics to CloudWatch this often (LocalStack's default, 60 s, is
        # AWS's resolution): every 10 s, an alarm with a 10 s period (the tests' AlarmPeriodSeconds)
        # sees a datapoint in each period, and one with AWS's 60 s sees six.
        "SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL": "10",
        "ARRIVAL_LAMBDA_VENV_CACHE": str(settings.cache_dir / "lambda-venvs"),
        # Read by the executor package's IAM enforcement hook (iam_enforcement.py).
        "ARRIVAL_IAM_ENFORCEMENT": "1" if settings.iam_enforcement else "0",
        "ARRIVAL_UV": _uv(),
        CLOUD_ID_VARIABLE: settings.cloud_id,
        "VIRTUAL_ENV": str(venv_python.parent.parent),
        "PATH": f"{venv_python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Service(
        name="localstack",
        argv=[str(venv_python), "-m", "localstack.runtime.main"],
        env=env,
        health_url=f"http://127.0.0.1:{port}/_localstack/health",
        ports=[port],
    )


def supervisor_argv(settings: LocalCloudSettings) -> list[str]:
    return [sys.executable, "-m", "localcloud.supervisor", "--state-dir", str(settings.state_dir)]
