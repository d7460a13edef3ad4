"""`arrival-serve` with several worker processes, on several instances (real uvicorn, LocalStack's S3,
SNS and SQS): every worker answers, and one event on the stack's reload topic reaches each worker of
each instance, through a queue of each instance's own (serving/reload.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localcloud.instance_agent import MetadataStub
from localcloud.processes import free_port, is_alive
from tests import serving_bundles
from tests.conftest import LocalCloud
from tests.helpers import eventually

pytestmark = pytest.mark.integration

API_KEY = "k" * 32  # pragma: allowlist secret  # this test's own servers


@contextlib.contextmanager
def instance_metadata(instance_id: str) -> Iterator[str]:
    """The instance metadata service of one instance, as the local cloud's agent gives it."""
    stub = MetadataStub({"instance-id": instance_id})
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield stub.url
    finally:
        stub.shutdown()


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


def answer(client: httpx.Client) -> tuple[int, str] | None:
    """(the worker's pid, the version it answers for iris), on a connection of its own, so that the
    kernel may hand it to any worker."""
    try:
        response = client.get("/models/iris", headers={"connection": "close"})
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return int(response.headers["x-arrival-worker"]), response.json()["version"]


def test_one_event_reaches_every_worker_of_every_instance_through_queues_of_their_own(
    local_cloud: LocalCloud, unique: str, tmp_path: Path
) -> None:
    # GIVEN a models bucket with version 1, and the stack's reload topic
    s3, sns, sqs = (local_cloud.client(name) for name in ("s3", "sns", "sqs"))
    bucket = f"workers-{unique}"
    s3.create_bucket(Bucket=bucket)
    trained = serving_bundles.trained("iris", "iris")
    serving_bundles.publish(s3, trained, "1", bucket=bucket)
    topic_name = f"w{unique}-serving-reload"
    topic = sns.create_topic(Name=topic_name)["TopicArn"]
    instance_ids = [f"i-0{unique}a", f"i-0{unique}b"]
    clients: list[httpx.Client] = []
    seen: dict[str, dict[int, str]] = {}  # instance -> worker pid -> version

    with contextlib.ExitStack() as running:
        # ...and two instances of arrival-serve with two workers each
        for instance_id in instance_ids:
            port = free_port()
            environment = {
                **os.environ,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": running.enter_context(instance_metadata(instance_id)),
                "ARRIVAL_SERVING_MODELS_BUCKET": bucket,
                "ARRIVAL_SERVING_RELOAD_TOPIC_ARN": topic,
                "ARRIVAL_SERVING_HOST": "127.0.0.1",
                "ARRIVAL_SERVING_PORT": str(port),
                "ARRIVAL_SERVING_API_KEY": API_KEY,
                "ARRIVAL_SERVING_WORKERS": "2",
                # Only the topic can bring version 2 in time: the poll is an hour away.
                "ARRIVAL_SERVING_POLL_SECONDS": "3600",
            }
            running.enter_context(arrival_serve(environment, tmp_path / f"{instance_id}.log"))
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"x-api-key": API_KEY}, timeout=5
            )
            clients.append(client)
            seen[instance_id] = {}

        def every_worker_answers(version: str) -> bool:
            for instance_id, client in zip(instance_ids, clients, strict=True):
                if (found := answer(client)) is not None:
                    seen[instance_id][found[0]] = found[1]
            return all(len(workers) == 2 and set(workers.values()) == {version} for workers in seen.values())

        # WHEN both run: each instance has its own queue on the topic, and two workers answer version 1
        queue_names = {f"{topic_name}-{instance_id}" for instance_id in instance_ids}

        def subscribed() -> bool:
            listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            return {found["Endpoint"].rsplit(":", 1)[-1] for found in listed} == queue_names

        eventually(subscribed, 60, what="a queue of each instance's own on the topic")
        eventually(lambda: every_worker_answers("1"), 60, interval=0.05, what=f"every worker on 1 ({seen})")

        # WHEN version 2 is promoted and its event is published once on the topic
        serving_bundles.publish(s3, trained, "2", bucket=bucket)
        sns.publish(TopicArn=topic, Message='{"detail-type": "ModelPromoted"}')

        # THEN each worker of each instance answers with version 2
        eventually(lambda: every_worker_answers("2"), 30, interval=0.05, what=f"every worker on 2 ({seen})")

    # AND the instances' queues and subscriptions went with them
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    left = sqs.list_queues(QueueNamePrefix=topic_name).get("QueueUrls", [])
    assert left == []


def test_the_workers_end_with_their_supervisor_even_when_it_is_killed(
    local_cloud: LocalCloud, unique: str, tmp_path: Path
) -> None:
    # GIVEN arrival-serve with two workers (no topic: nothing to subscribe)
    bucket = f"orphans-{unique}"
    local_cloud.client("s3").create_bucket(Bucket=bucket)
    port = free_port()
    environment = {
        **os.environ,
        "ARRIVAL_SERVING_MODELS_BUCKET": bucket,
        "ARRIVAL_SERVING_HOST": "127.0.0.1",
        "ARRIVAL_SERVING_PORT": str(port),
        "ARRIVAL_SERVING_API_KEY": API_KEY,
        "ARRIVAL_SERVING_WORKERS": "2",
    }
    workers: set[int] = set()

    def two_workers_seen() -> bool:
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"http://127.0.0.1:{port}/health", headers={"connection": "close"})
            workers.add(int(response.json()["worker"]))
        return len(workers) == 2

    with arrival_serve(environment, tmp_path / "serve.log") as server:
        eventually(two_workers_seen, 60, interval=0.05, what="two workers answering")

        # WHEN the supervisor is killed outright (no shutdown of its own)
        server.kill()
        server.wait()

        # THEN no worker is left holding the port: the kernel ended them with it
        eventually(lambda: not any(is_alive(pid) for pid in workers), 30, what=f"workers {workers} ended")
