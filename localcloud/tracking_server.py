"""The MLflow tracking server as a service of the supervisor: one worker, SQLite in the state
directory by default (PostgreSQL by ARRIVAL_MLFLOW_BACKEND_STORE_URI), artifacts in LocalStack S3
behind the server's artifact proxy, so clients need no S3 settings of their own. It runs MLflow's
basic-auth app: a request without the local cloud's login gets 401 (`localcloud/tracking_login.py`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from localcloud.emulator import Service
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import TrackingLogin, ensure_login, write_owner_only

# Anyone who is not the admin gets nothing, not even READ: a reader learns where every champion's
# files are and which data trained it, and anonymous callers are refused outright (401) before
# permissions are looked at. The trainer and the operator both log in as the admin.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
# Each request's password is checked against a PBKDF2 hash, about 0.8 s of CPU here; a training
# makes hundreds of requests. A check that passed is trusted this long instead. The cache is in the
# one worker's memory, which the update-password API clears, so it cannot outlive a rotation.
AUTH_CACHE_SECONDS = 300
# Variables that would override the configuration file's admin login (MLflow reads them first).
_ADMIN_OVERRIDES = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")


def _ensure_artifact_bucket(settings: LocalCloudSettings) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.region,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106  # LocalStack accepts any credentials
    )
    try:
        s3.head_bucket(Bucket=settings.mlflow_artifact_bucket)
    except ClientError:
        s3.create_bucket(Bucket=settings.mlflow_artifact_bucket)


def _fresh_local_store(settings: LocalCloudSettings, database: Path) -> None:
    """LocalStack starts empty on every `arrival up` (its S3 does not persist), so the embedded
    registry starts empty too: runs whose artifacts are gone would make every later gate fail."""
    database.unlink(missing_ok=True)
    _ensure_artifact_bucket(settings)


def auth_config(login: TrackingLogin, users_database: Path) -> str:
    """The basic-auth app's configuration file (`MLFLOW_AUTH_CONFIG_PATH`). It holds the admin's
    password, which MLflow applies only when it creates the admin in an empty user store."""
    return (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{users_database}\n"
        f"admin_username = {login.username}\n"
        f"admin_password = {login.password}\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )


def prepare_auth(store: Path) -> tuple[TrackingLogin, Path]:
    """The login and the configuration file, the same on every start of the same local cloud: a
    restart, or `arrival up` after `down`, keeps the users and the login that made them. A login
    made anew (its file was deleted) starts its user store anew, since MLflow would keep the old
    admin password."""
    login, is_new = ensure_login(store.parent)
    users_database = (store / "users.db").resolve()
    if is_new:
        users_database.unlink(missing_ok=True)
    config = store / "auth.ini"
    write_owner_only(config, auth_config(login, users_database))
    return login, config


def mlflow_service(settings: LocalCloudSettings) -> Service:
    store = settings.state_dir / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    database = (store / "mlflow.db").resolve()
    backend = settings.mlflow_backend_store_uri or f"sqlite:///{database}"
    bin_dir = Path(sys.executable).parent
    login, config = prepare_auth(store)
    env = {
        **{name: value for name, value in os.environ.items() if name not in _ADMIN_OVERRIDES},
        "MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": login.flask_secret_key,
        "MLFLOW_S3_ENDPOINT_URL": settings.aws_endpoint_url,
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": settings.region,
        # arrival runs no server-side MLflow jobs; without this the server keeps four huey
        # consumers (about 230 MB each) polling for them.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # `mlflow server` starts its workers by name, so the virtualenv's bin must be on PATH.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Service(
        name="mlflow",
        restart_on_exit=True,
        argv=[
            str(bin_dir / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.mlflow_port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            f"s3://{settings.mlflow_artifact_bucket}/",
        ],
        env=env,
        health_url=f"{settings.mlflow_url}/health",
        ports=[settings.mlflow_port],
        before_start=(
            (lambda: _fresh_local_store(settings, database))
            if settings.mlflow_backend_store_uri is None
            else (lambda: _ensure_artifact_bucket(settings))
        ),
    )
