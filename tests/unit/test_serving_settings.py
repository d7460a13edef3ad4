from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvicorn
from pydantic import ValidationError

from serving import main as serving_main
from serving.main import worker_count
from serving.settings import ServingSettings, get_serving_settings


def test_settings_come_from_arrival_serving_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ARRIVAL_SERVING_MODELS_BUCKET": "models",
        "ARRIVAL_SERVING_RELOAD_TOPIC_ARN": "arn:aws:sns:eu-west-1:1:prod-serving-reload",
        "ARRIVAL_SERVING_POLL_SECONDS": "2.5",
        "ARRIVAL_SERVING_MAX_BATCH": "100",
        "ARRIVAL_SERVING_PORT": "9000",
    }.items():
        monkeypatch.setenv(name, value)
    get_serving_settings.cache_clear()

    settings = get_serving_settings()

    assert settings.models_bucket == "models"
    assert settings.reload_topic_arn == "arn:aws:sns:eu-west-1:1:prod-serving-reload"
    assert (settings.poll_seconds, settings.max_batch, settings.port) == (2.5, 100, 9000)
    assert (settings.lambda_check_seconds, settings.max_body_bytes) == (2, 6 * 1024 * 1024)
    assert get_serving_settings() is settings
    get_serving_settings.cache_clear()


def test_the_models_bucket_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARRIVAL_SERVING_MODELS_BUCKET", raising=False)

    with pytest.raises(ValidationError, match="models_bucket"):
        ServingSettings()  # type: ignore[call-arg]


def test_arrival_serve_runs_a_worker_per_core_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)

    assert worker_count(ServingSettings(models_bucket="models")) == 3
    assert worker_count(ServingSettings(models_bucket="models", workers=0)) == 3  # the template's default
    assert worker_count(ServingSettings(models_bucket="models", workers=1)) == 1
    with pytest.raises(ValidationError, match="workers"):
        ServingSettings(models_bucket="models", workers=-1)


def test_arrival_serve_runs_its_workers_from_the_factory_with_their_reload_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    def run_workers(config: uvicorn.Config, listener: object) -> None:
        signal_file = os.environ[serving_main.SIGNAL_FILE_VARIABLE]
        seen.update(
            config=config, listener=listener, signal_directory_exists=Path(signal_file).parent.is_dir()
        )

    monkeypatch.setattr(serving_main, "run_workers", run_workers)
    # serve sets it for its workers: set here first, so that the test's end puts back what was
    monkeypatch.setenv(serving_main.SIGNAL_FILE_VARIABLE, "")
    monkeypatch.delenv("LISTEN_FDS", raising=False)

    serving_main.serve(ServingSettings(models_bucket="models", workers=2), serving_main.KEYED_APP)

    config = seen["config"]
    assert isinstance(config, uvicorn.Config)
    assert config.app == "serving.worker:keyed_app" and config.factory is True
    assert config.workers == 2 and seen["signal_directory_exists"] is True
    assert seen["listener"] is None  # nothing handed over: the workers bind the port themselves
    # The signal's directory is the process's own, and goes with it.
    assert not Path(os.environ[serving_main.SIGNAL_FILE_VARIABLE]).parent.exists()
