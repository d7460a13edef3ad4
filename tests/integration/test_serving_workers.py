"""`arrival-serve` with several worker processes (real uvicorn, LocalStack's S3 and SQS): every worker
answers, and one message on the instance's reload queue reaches each of them, not just the one SQS
would hand it to (serving/reload.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localcloud.processes import free_port
from tests import serving_bundles
from tests.conftest import LocalCloud
from tests.helpers import eventually

pytestmark = pytest.mark.integration

API_KEY = "k" * 32  # pragma: allowlist secret  # this test's own server


@contextlib.contextmanager
def arrival_serve(environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as output:
        process = subprocess.Popen(  # our own entry point
            [str(Path(sys.executable).parent / "arrival-serve")],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def answers(client: httpx.Client) -> tuple[int, str] | None:
    """(the worker's pid, the version it answers for iris), on a connection of its own, so that the
    kernel may hand it to any worker."""
    try:
        response = client.get("/models/iris", headers={"connection": "close"})
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return int(response.headers["x-arrival-worker"]), response.json()["version"]


def test_every_worker_answers_and_one_queue_message_reloads_them_all(
    local_cloud: LocalCloud, unique: str, tmp_path: Path
) -> None:
    # GIVEN a models bucket with version 1, and a reload queue
    s3 = local_cloud.client("s3")
    sqs = local_cloud.client("sqs")
    bucket = f"workers-{unique}"
    s3.create_bucket(Bucket=bucket)
    trained = serving_bundles.trained("iris", "iris")
    serving_bundles.publish(s3, trained, "1", bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"workers-{unique}")["QueueUrl"]
    port = free_port()
    environment = {
        **os.environ,
        "ARRIVAL_SERVING_MODELS_BUCKET": bucket,
        "ARRIVAL_SERVING_RELOAD_QUEUE_URL": queue_url,
        "ARRIVAL_SERVING_HOST": "127.0.0.1",
        "ARRIVAL_SERVING_PORT": str(port),
        "ARRIVAL_SERVING_API_KEY": API_KEY,
        "ARRIVAL_SERVING_WORKERS": "2",
        # Only the queue can bring version 2 in time: the poll is an hour away.
        "ARRIVAL_SERVING_POLL_SECONDS": "3600",
    }
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"x-api-key": API_KEY}, timeout=5)

    with arrival_serve(environment, tmp_path / "serve.log") as server:
        # WHEN arrival-serve runs two workers: both answer, each with version 1
        seen: dict[int, str] = {}

        def two_workers_seen() -> bool:
            if (answer := answers(client)) is not None:
                seen[answer[0]] = answer[1]
            return len(seen) == 2

        eventually(two_workers_seen, 60, interval=0.05, what="two workers answering")
        assert set(seen.values()) == {"1"}
        assert server.pid not in seen  # the workers, not the supervisor, answer

        # WHEN version 2 is promoted and its event is one message on the queue
        serving_bundles.publish(s3, trained, "2", bucket=bucket)
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"detail-type": "ModelPromoted"}')

        # THEN each worker answers with version 2
        def every_worker_on_2() -> bool:
            if (answer := answers(client)) is not None:
                seen[answer[0]] = answer[1]
            return len(seen) == 2 and set(seen.values()) == {"2"}

        eventually(every_worker_on_2, 30, interval=0.05, what=f"version 2 in every worker (seen {seen})")
        assert len(seen) == 2
