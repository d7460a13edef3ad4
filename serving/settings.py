"""What the serving process (EC2 under uvicorn, or the Lambda function) reads from its environment."""

from __future__ import annotations

from functools import cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARRIVAL_SERVING_", extra="ignore")

    models_bucket: str = Field(description="the bucket holding pointers/ and bundles/")
    reload_queue_url: str | None = Field(
        default=None, description="an SQS queue whose messages say 'a pointer moved: refresh now'"
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
    capture_max_queued_records: int = Field(
        default=20_000, ge=1, description="captured records waiting to be written, at most; more are dropped"
    )
    host: str = "0.0.0.0"  # noqa: S104  # the server must answer on the instance's interfaces
    port: int = Field(default=8080, gt=0, lt=65536)


@cache
def get_serving_settings() -> ServingSettings:
    return ServingSettings()  # type: ignore[call-arg]  # filled from the environment
