"""Every setting arrival reads, parsed from the environment at first use (never at import).

One class per deployable where they differ: the local-cloud tooling, and the pipeline's functions.
The AWS endpoint is never a setting of ours: boto3 reads ``AWS_ENDPOINT_URL`` itself, so the same
code talks to LocalStack or to AWS.
"""

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
    aws_port: int = Field(default=4566, description="LocalStack's gateway port")
    mlflow_port: int = Field(default=5000, description="the MLflow tracking server's port")
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
    localstack_python: str | None = Field(
        default=None, description="interpreter (>= 3.12) for LocalStack; found automatically if unset"
    )
    startup_timeout_seconds: float = 180.0
    shutdown_timeout_seconds: float = 60.0

    @property
    def aws_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def cloud_id(self) -> str:
        """Marks every process of this local cloud, so none can be left behind unnoticed."""
        return hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]


class PipelineSettings(BaseSettings):
    """What the pipeline's functions read from their environment (set by template.yaml's Globals)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    stack_name: str = Field(validation_alias="ARRIVAL_STACK_NAME")
    processed_bucket: str = Field(validation_alias="PROCESSED_BUCKET")
    quarantine_bucket: str = Field(validation_alias="QUARANTINE_BUCKET")
    config_bucket: str = Field(validation_alias="CONFIG_BUCKET")
    training_queue_url: str = Field(validation_alias="TRAINING_QUEUE_URL")
    trainer_launch_template_id: str = Field(validation_alias="TRAINER_LAUNCH_TEMPLATE_ID")
    event_bus_name: str = Field(validation_alias="EVENT_BUS_NAME")
    reconcile_lease_seconds: float = Field(default=30.0, validation_alias="RECONCILE_LEASE_SECONDS")
    chunk_rows: int = Field(default=100_000, validation_alias="INGEST_CHUNK_ROWS")
    scratch_dir: Path = Field(default=Path("/tmp"), validation_alias="INGEST_SCRATCH_DIR")  # noqa: S108  # Lambda's only writable disk


class WorkerSettings(BaseSettings):
    """The EC2 training worker's knobs (ARRIVAL_WORKER_*); resource names come from the stack's outputs."""

    model_config = SettingsConfigDict(env_prefix="ARRIVAL_WORKER_", extra="ignore")

    quiet_seconds: float = Field(default=2.0, description="train once a model's data list is this still")
    max_quiet_seconds: float = Field(
        default=30.0, description="stop waiting for files still being ingested after this long"
    )
    idle_seconds: float = Field(default=120.0, description="terminate the instance after this long idle")
    max_attempts: int = Field(default=3, ge=1, description="failures of a job before its dead-letter queue")
    visibility_seconds: int = Field(default=60, ge=5, description="job lease; extended while training")
    poll_seconds: int = Field(default=1, ge=0, le=20)
    workspace_root: Path | None = Field(default=None, description="where scratch DVC workspaces go")


@cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()


@cache
def get_local_cloud_settings() -> LocalCloudSettings:
    return LocalCloudSettings()


@cache
def get_pipeline_settings() -> PipelineSettings:
    return PipelineSettings()  # type: ignore[call-arg]  # filled from the environment
