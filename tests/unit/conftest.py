"""Unit tests never reach the network: sockets are refused, AWS calls go to moto."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_socket import disable_socket

from tests.conftest import CLOUD_ENVIRONMENT_NAMES

EVENTS = Path(__file__).resolve().parents[2] / "events"


def pytest_configure() -> None:
    # What template.yaml's Globals give every function; powertools reads them when the handlers'
    # shared logger and metrics are created, at import.
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "arrival")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Arrival")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")


def pytest_runtest_setup() -> None:
    disable_socket(allow_unix_socket=True)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return event


class FakeLambdaContext:
    function_name = "arrival-IngestFunction"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:arrival-IngestFunction"
    aws_request_id = "52fdfc07-2182-454f-963f-5f0f9a621d72"
    log_group_name = "/aws/lambda/arrival-IngestFunction"
    log_stream_name = "2026/11/27/[$LATEST]abc"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture(autouse=True)
def _no_local_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test runs the same whether or not its xdist worker ran local-cloud tests before it:
    their endpoints, credentials and short worker settings (ARRIVAL_WORKER_MAX_ATTEMPTS=2...)."""
    for name in CLOUD_ENVIRONMENT_NAMES:
        monkeypatch.delenv(name, raising=False)
