"""What the serving process (EC2 under uvicorn, or the Lambda function) reads from its environment."""

from __future__ import annotations

import os
from functools import cache

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# API Gateway refuses API key values shorter than this; the server holds its key to the same rule.
MIN_API_KEY_LENGTH = 20


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARRIVAL_SERVING_", extra="ignore")

    models_bucket: str = Field(description="the bucket holding pointers/ and bundles/")
    # Set by the instance's boot (deploy/arrival-boot.sh), not by ARRIVAL_SERVING_*: the release is
    # the instance's.
    release_version: str | None = Field(
        default=None,
        validation_alias="ARRIVAL_RELEASE_VERSION",
        description="the release this server runs, reported by /health",
    )
    reload_topic_arn: str | None = Field(
        default=None,
        description="the stack's reload topic (SNS): the server subscribes a queue of its own to it, "
        "whose messages say 'a pointer moved: refresh now'",
    )
    reload_signal_file: str | None = Field(
        default=None,
        description="set by arrival-serve for its workers: the file its one reader of the reload queue "
        "bumps on each message (serving/reload.py); each worker refreshes when it changes",
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="arrival-serve's uvicorn worker processes, each holding every model; 0: one per core "
        "the process may run on (the template's ServingWorkers)",
    )
    poll_seconds: float = Field(default=10, gt=0, description="refresh this often even without a message")
    lambda_check_seconds: float = Field(
        default=2, ge=0, description="in Lambda, look at the pointers at most this often (on the request)"
    )
    max_batch: int = Field(default=10_000, ge=1, description="records in one request, at most")
    max_body_bytes: int = Field(default=6 * 1024 * 1024, gt=0, description="request body size, at most")
    capture_bucket: str | None = Field(
        default=None, description="where sampled requests are captured for the drift report; unset: none are"
    )
    capture_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="the share of requests captured, for every model; unset: each contract's "
        "monitoring.sample_rate; 0: none",
    )
    capture_batch_records: int = Field(default=5000, ge=1, description="write a capture object this full")
    capture_flush_seconds: float = Field(
        default=10, gt=0, description="write captured records at least this often (EC2)"
    )
    capture_max_queued_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="bytes of captured requests waiting to be written, at most; more are dropped and counted",
    )
    offload_body_bytes: int = Field(
        default=16 * 1024,
        ge=0,
        description="a prediction whose body is larger may be answered in a worker thread, off the loop",
    )
    offload_above_seconds: float = Field(
        default=0.006,
        ge=0,
        description=(
            "a prediction over offload_body_bytes goes to a worker thread only when its estimated time "
            "(validation and the model's own cost per row, measured at load) is longer"
        ),
    )
    predict_threads: int = Field(
        default=2, ge=1, description="worker threads answering the predictions over offload_body_bytes"
    )
    request_budget_seconds: float = Field(
        default=5,
        gt=0,
        description="a prediction answered in a worker thread gets this long, from its arrival, or a 503",
    )
    host: str = "0.0.0.0"  # noqa: S104  # the server must answer on the instance's interfaces
    port: int = Field(default=8080, gt=0, lt=65536)
    # The server checks the key itself; on Lambda, API Gateway does, and the function needs neither.
    api_key_secret: str | None = Field(
        default=None,
        description="the Secrets Manager secret (ARN or name) holding the API key `arrival-serve` "
        "requires in x-api-key; read once, at start",
    )
    api_key: SecretStr | None = Field(
        default=None,
        min_length=MIN_API_KEY_LENGTH,
        description="the API key itself, instead of a secret (tests, benchmarks); the template passes "
        "the secret",
    )


def cores_available() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a container or
    `taskset` may give it fewer than the machine's), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ServerSettings(ServingSettings):
    """`arrival-serve`'s settings: the same, and a key it must have. A server started without one
    would answer anyone, so it refuses to start instead."""

    @model_validator(mode="after")
    def _requires_an_api_key(self) -> ServerSettings:
        if self.api_key is None and not self.api_key_secret:
            raise ValueError(
                "arrival-serve refuses to serve without an API key: set ARRIVAL_SERVING_API_KEY_SECRET "
                "to the Secrets Manager secret holding it (the stack's ServingApiKeySecretArn output; "
                "the template's user data sets it), or ARRIVAL_SERVING_API_KEY"
            )
        return self


@cache
def get_serving_settings() -> ServingSettings:
    return ServingSettings()  # type: ignore[call-arg]  # filled from the environment


@cache
def get_server_settings() -> ServerSettings:
    return ServerSettings()  # type: ignore[call-arg]  # filled from the environment
