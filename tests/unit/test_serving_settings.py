from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.settings import ServingSettings, get_serving_settings


def test_settings_come_from_arrival_serving_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ARRIVAL_SERVING_MODELS_BUCKET": "models",
        "ARRIVAL_SERVING_RELOAD_QUEUE_URL": "https://sqs.example/reload",
        "ARRIVAL_SERVING_POLL_SECONDS": "2.5",
        "ARRIVAL_SERVING_MAX_BATCH": "100",
        "ARRIVAL_SERVING_PORT": "9000",
    }.items():
        monkeypatch.setenv(name, value)
    get_serving_settings.cache_clear()

    settings = get_serving_settings()

    assert (settings.models_bucket, settings.reload_queue_url) == ("models", "https://sqs.example/reload")
    assert (settings.poll_seconds, settings.max_batch, settings.port) == (2.5, 100, 9000)
    assert (settings.lambda_check_seconds, settings.max_body_bytes) == (2, 6 * 1024 * 1024)
    assert get_serving_settings() is settings
    get_serving_settings.cache_clear()


def test_the_models_bucket_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARRIVAL_SERVING_MODELS_BUCKET", raising=False)

    with pytest.raises(ValidationError, match="models_bucket"):
        ServingSettings()  # type: ignore[call-arg]
