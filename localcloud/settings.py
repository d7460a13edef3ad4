"""Settings only the local cloud and its tooling read (``arrival up``, the supervisor, the instance
agent): a deployed stack never sees them."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _xdg_dir(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback) / "arrival"


class LocalCloudSettings(BaseSettings):
    """Where and how ``arrival up`` runs the AWS side on this machine."""

    model_config = SettingsConfigDict(env_prefix="ARRIVAL_", extra="ignore")

    state_dir: Path = Field(
        default_factory=lambda: _xdg_dir("XDG_STATE_HOME", ".local/state"),
        description="pidfile, logs and LocalStack's data for one local cloud",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _xdg_dir("XDG_CACHE_HOME", ".cache"),
        description="virtualenvs shared by every local cloud on this machine",
    )
    instances_dir: Path | None = Field(
        default=None,
        description="where the instance agent installs releases; <cache_dir>/instances if unset",
    )
    aws_port: int = Field(default=4566, description="LocalStack's gateway port")
    mlflow_port: int = Field(default=5000, description="the MLflow tracking server's port")
    api_port: int = Field(default=8080, description="the model API's port, where the agent runs the server")
    mlflow_backend_store_uri: str | None = Field(
        default=None,
        description="MLflow's database; SQLite in the state directory if unset (or postgresql://...)",
    )
    mlflow_artifact_bucket: str = "arrival-mlflow-artifacts"
    agent_roles: list[str] = Field(
        default_factory=lambda: ["trainer", "server"],
        description="instance roles the EC2 agent boots; others are only recorded, as LocalStack does",
    )
    agent_stacks: list[str] | None = Field(
        default=None, description="stacks whose instances the EC2 agent boots; all if unset"
    )
    region: str = "us-east-1"
    # On by default: a local cloud that lets through what AWS refuses would make green mean nothing.
    iam_enforcement: bool = Field(
        default=True,
        description="refuse what an assumed role's policies do not allow, as AWS would "
        "(the executor package's iam_enforcement.py); the operator's own credentials stay unrestricted",
    )
    localstack_python: str | None = Field(
        default=None, description="interpreter (>= 3.13) for LocalStack; found automatically if unset"
    )
    startup_timeout_seconds: float = 180.0
    shutdown_timeout_seconds: float = 60.0

    @property
    def instance_installs(self) -> Path:
        return self.instances_dir or self.cache_dir / "instances"

    @property
    def aws_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def cloud_id(self) -> str:
        """Marks every process of this local cloud, so none can be left behind unnoticed."""
        return hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]


@cache
def get_local_cloud_settings() -> LocalCloudSettings:
    return LocalCloudSettings()
