"""Every setting arrival reads, parsed from the environment at first use (never at import).

One class per deployable where they differ (the local cloud's own live in ``localcloud/settings.py``).
The AWS endpoint is never a setting of ours: boto3 reads ``AWS_ENDPOINT_URL`` itself, so the same
code talks to LocalStack or to AWS.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # The stack's MaxTrainers: trainers running at once, each training one model at a time.
    max_trainers: int = Field(default=4, ge=1, validation_alias="MAX_TRAINERS")
    # Unset where ingest runs without a deployed stack (a developer's process, the unit tests): it
    # then reconciles in-process.
    reconcile_function_name: str | None = Field(default=None, validation_alias="RECONCILE_FUNCTION_NAME")
    trainer_heartbeat_stale_seconds: float = Field(
        default=300.0, gt=0, validation_alias="TRAINER_HEARTBEAT_STALE_SECONDS"
    )
    # On AWS a trainer's user data may install packages before the worker's first heartbeat.
    trainer_boot_grace_seconds: float = Field(
        default=900.0, gt=0, validation_alias="TRAINER_BOOT_GRACE_SECONDS"
    )
    chunk_rows: int = Field(default=100_000, validation_alias="INGEST_CHUNK_ROWS")
    # Unset (a developer's process): a file that keeps failing is left to the queue's redrive policy.
    ingest_dead_letter_queue_url: str | None = Field(
        default=None, validation_alias="INGEST_DEAD_LETTER_QUEUE_URL"
    )
    ingest_max_receive_count: int = Field(default=3, ge=1, validation_alias="INGEST_MAX_RECEIVE_COUNT")
    scratch_dir: Path = Field(default=Path("/tmp"), validation_alias="INGEST_SCRATCH_DIR")  # noqa: S108  # Lambda's only writable disk


class WorkerSettings(BaseSettings):
    """The EC2 training worker's knobs (ARRIVAL_WORKER_*); resource names come from the stack's outputs."""

    model_config = SettingsConfigDict(env_prefix="ARRIVAL_WORKER_", extra="ignore")

    quiet_seconds: float = Field(default=2.0, description="train once a model's data list is this still")
    max_quiet_seconds: float = Field(
        default=30.0, description="stop waiting for files still being ingested after this long"
    )
    idle_seconds: float = Field(default=120.0, description="terminate the instance after this long idle")
    max_attempts: int = Field(default=5, ge=1, description="failures of a job before its dead-letter queue")
    retry_backoff_seconds: float = Field(
        default=30.0, ge=0, description="wait before a failed job's first retry; doubles with each try"
    )
    heartbeat_seconds: float = Field(
        default=30.0, gt=0, description="how often a trainer tells the reconciler it is alive"
    )
    visibility_seconds: int = Field(default=60, ge=5, description="job lease; extended while training")
    trusted_artifact_roots: list[str] = Field(
        # The tracking server's own artifact proxy (`mlflow server --artifacts-destination`).
        default=["mlflow-artifacts:/"],
        description="where a champion the trainer loads (unpickles) may be stored",
    )
    mlflow_login_secret: str | None = Field(
        default=None,
        description="the Secrets Manager secret holding the tracking server's login (the stack's "
        "MlflowLoginSecretArn); unset or empty: MLFLOW_TRACKING_USERNAME/PASSWORD if set, else anonymous",
    )
    poll_seconds: int = Field(default=1, ge=0, le=20)
    release_check_seconds: float = Field(
        default=30,
        ge=0,
        description="how often an idle trainer asks the stack which release it runs (a DescribeStacks "
        "call), as a server's arrival-follow timer does; after each job it asks at once",
    )
    workspace_root: Path | None = Field(default=None, description="where scratch DVC workspaces go")
    # Set by the instance's boot (deploy/arrival-boot.sh), not by ARRIVAL_WORKER_*: the release is the
    # instance's, whatever runs on it.
    release_version: str | None = Field(
        default=None,
        validation_alias="ARRIVAL_RELEASE_VERSION",
        description="the release this worker runs; once the stack names another, it ends after its jobs",
    )


class BatchSettings(BaseSettings):
    """What the batch-prediction function reads (template.yaml's BatchFunction and its Globals)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    config_bucket: str = Field(validation_alias="CONFIG_BUCKET")
    models_bucket: str = Field(validation_alias="MODELS_BUCKET")
    event_bus_name: str = Field(validation_alias="EVENT_BUS_NAME")
    # Unset (a developer's process): a file that fails is reported in its output folder and by event only.
    dead_letter_queue_url: str | None = Field(default=None, validation_alias="BATCH_DEAD_LETTER_QUEUE_URL")
    max_receive_count: int = Field(default=3, ge=1, validation_alias="BATCH_MAX_RECEIVE_COUNT")
    chunk_rows: int = Field(default=100_000, ge=1, validation_alias="BATCH_CHUNK_ROWS")
    # One invocation's share of work: docs/batch.md derives it from the benchmark and the timeout.
    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0, validation_alias="BATCH_MAX_FILE_BYTES")
    # Kept free at the end of an invocation to upload what was scored and report a file cut short.
    time_margin_seconds: float = Field(default=30.0, ge=0, validation_alias="BATCH_TIME_MARGIN_SECONDS")
    scratch_dir: Path = Field(default=Path("/tmp"), validation_alias="BATCH_SCRATCH_DIR")  # noqa: S108  # Lambda's only writable disk


@cache
def get_batch_settings() -> BatchSettings:
    return BatchSettings()  # type: ignore[call-arg]  # filled from the environment


class NotifySettings(BaseSettings):
    """What the notify function reads (template.yaml): where its messages go, and the stack they are about."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    stack_name: str = Field(validation_alias="ARRIVAL_STACK_NAME")
    notification_topic_arn: str = Field(validation_alias="NOTIFICATION_TOPIC_ARN")


@cache
def get_notify_settings() -> NotifySettings:
    return NotifySettings()  # type: ignore[call-arg]  # filled from the environment


@cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()


@cache
def get_pipeline_settings() -> PipelineSettings:
    return PipelineSettings()  # type: ignore[call-arg]  # filled from the environment


class MonitoringSettings(BaseSettings):
    """What the drift function reads from its environment (template.yaml: DriftFunction and Globals)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    models_bucket: str = Field(validation_alias="MODELS_BUCKET")
    capture_bucket: str = Field(validation_alias="CAPTURE_BUCKET")
    processed_bucket: str = Field(validation_alias="PROCESSED_BUCKET")
    event_bus_name: str = Field(validation_alias="EVENT_BUS_NAME")
    window_hours: float = Field(default=24, gt=0, validation_alias="DRIFT_WINDOW_HOURS")
    min_rows: int = Field(default=100, ge=1, validation_alias="DRIFT_MIN_ROWS")
    max_rows: int = Field(default=100_000, ge=1, validation_alias="DRIFT_MAX_ROWS")
    reference_rows: int = Field(default=10_000, ge=1, validation_alias="DRIFT_REFERENCE_ROWS")


@cache
def get_monitoring_settings() -> MonitoringSettings:
    return MonitoringSettings()  # type: ignore[call-arg]  # filled from the environment


class SweepSettings(BaseSettings):
    """What the sweep function reads (template.yaml: SweepFunction and Globals)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    stack_name: str = Field(validation_alias="ARRIVAL_STACK_NAME")
    raw_bucket: str = Field(validation_alias="RAW_BUCKET")
    processed_bucket: str = Field(validation_alias="PROCESSED_BUCKET")
    ingest_queue_url: str = Field(validation_alias="INGEST_QUEUE_URL")
    # Longer than a notification takes to reach ingest, so the sweep does not race a live one.
    grace_seconds: float = Field(default=30.0, ge=0, validation_alias="SWEEP_GRACE_SECONDS")
    # Each pass looks this far behind where the last one ended: a margin for a version whose
    # LastModified comes before the moment it can be listed (a long upload's).
    lookback_seconds: float = Field(default=86_400.0, ge=0, validation_alias="SWEEP_LOOKBACK_SECONDS")
    max_versions_per_run: int = Field(default=100_000, ge=1, validation_alias="SWEEP_MAX_VERSIONS_PER_RUN")


@cache
def get_sweep_settings() -> SweepSettings:
    return SweepSettings()  # type: ignore[call-arg]  # filled from the environment
