"""`arrival-serve`: the model server on EC2, one uvicorn process."""

from __future__ import annotations

import logging

import uvicorn

from common.adapters.secrets import secret_string
from serving.app import GRACEFUL_SHUTDOWN_SECONDS, create_app
from serving.settings import MIN_API_KEY_LENGTH, ServerSettings, ServingSettings, get_server_settings


def api_key_of(settings: ServerSettings) -> str:
    """The key the server requires: its own setting, or the secret's value, read with the instance's
    role once, at start (a rotated key takes a restart: docs/serving.md)."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    if (
        not settings.api_key_secret
    ):  # ServerSettings refuses this already; kept for whoever builds one by hand
        raise ValueError(
            "arrival-serve refuses to serve without an API key: set ARRIVAL_SERVING_API_KEY_SECRET"
        )
    api_key = secret_string(settings.api_key_secret)
    if len(api_key) < MIN_API_KEY_LENGTH:
        raise ValueError(
            f"the secret {settings.api_key_secret} holds a key shorter than {MIN_API_KEY_LENGTH} characters: "
            "refusing to serve with it"
        )
    return api_key


def main() -> None:
    settings = get_server_settings()
    serve(settings, api_key_of(settings))


def serve(settings: ServingSettings, api_key: str | None) -> None:
    """The app under uvicorn, as the serving instance runs it (benchmarks/serving.py also runs it
    without a key, to measure what the check costs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings, mode="server", api_key=api_key),
        host=settings.host,
        port=settings.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,  # a log line per prediction costs more than the prediction; /metrics counts them
        # Unbounded by default: one slow client would keep the process past its SIGKILL, captures unwritten.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_level="info",
    )
