"""`arrival-serve`: the model server on EC2, one uvicorn worker process per core.

The process started by the instance's boot is uvicorn's supervisor: it takes the port's socket from
the instance's systemd (or binds it, where nothing hands one over: serving/listening.py), starts
`ARRIVAL_SERVING_WORKERS` workers (default: one per core), starts one again if it dies, and reads the
instance's reload queue for all of them (serving/reload.py). Each worker (serving/worker.py) loads
every model itself, refreshes on the supervisor's signal and on its own poll, and answers. This module
imports neither the app nor onnxruntime: the supervisor holds no model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from common.adapters.secrets import secret_string
from serving.listening import inherited_socket, run_workers
from serving.reload import QueueListener, ReloadSubscription
from serving.reload_signal import ReloadSignal
from serving.settings import (
    MIN_API_KEY_LENGTH,
    ServerSettings,
    ServingSettings,
    cores_available,
    get_server_settings,
)
from serving.shutdown import GRACEFUL_SHUTDOWN_SECONDS, READER_JOIN_SECONDS

# The factories uvicorn imports in each worker (it starts workers with multiprocessing's spawn, so an
# app object cannot be handed over: each worker builds its own from the environment).
KEYED_APP = "serving.worker:keyed_app"
UNCHECKED_APP = "serving.worker:unchecked_app"  # benchmarks/serving.py only: what the key check costs
SIGNAL_FILE_VARIABLE = "ARRIVAL_SERVING_RELOAD_SIGNAL_FILE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


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
    # Checked here, before any worker starts: a worker that fails its start is started again by
    # uvicorn's supervisor, forever, where this stops the server with the reason. Each worker then
    # reads the key itself, so the key travels through no environment.
    api_key_of(settings)
    serve(settings, KEYED_APP)


def worker_count(settings: ServingSettings) -> int:
    return settings.workers or cores_available()


def serve(settings: ServingSettings, app_factory: str) -> None:
    """The workers under uvicorn's supervisor, as the serving instance runs them, and the reload
    queue's one reader beside them."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # Taken first: the variables naming it must not reach the workers (serving/listening.py).
    listener = inherited_socket()
    with reload_fan_out(settings) as signal:
        # uvicorn's workers are spawned with this environment, and read their settings from it.
        os.environ[SIGNAL_FILE_VARIABLE] = str(signal.path)
        config = uvicorn.Config(
            app_factory,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=worker_count(settings),
            loop="uvloop",
            http="httptools",
            # A log line per prediction costs more than the prediction; /metrics counts them.
            access_log=False,
            # Unbounded by default: one slow client would keep a worker past its SIGKILL, captures unwritten.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            log_level="info",
        )
        run_workers(config, listener)


@contextlib.contextmanager
def reload_fan_out(settings: ServingSettings) -> Iterator[ReloadSignal]:
    """The instance's reload signal, in a directory of this process's own, and the one reader of the
    instance's own reload queue bumping it; the queue and its subscription go when the server stops.
    Without a topic there is no queue: the workers then refresh on their poll alone."""
    with tempfile.TemporaryDirectory(prefix="arrival-serve-") as directory:
        signal = ReloadSignal(Path(directory) / "reload")
        subscription, listener = None, None
        if settings.reload_topic_arn:
            subscription = ReloadSubscription(settings.reload_topic_arn)
            listener = QueueListener(subscription.open, signal.bump)
            listener.start()
        try:
            yield signal
        finally:
            if listener is not None:
                listener.stop(timeout=READER_JOIN_SECONDS)
            if subscription is not None:
                subscription.close()
