"""How a reload hint reaches every worker of an instance: the reload queue's one reader bumps a signal
file, and every worker's store refreshes when it moves (serving/reload.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from serving.reload import QueueListener, ReloadSignal, ReloadSignalWatch
from serving.store import ModelStore
from tests import serving_bundles
from tests.helpers import eventually
from tests.serving_bundles import MODELS_BUCKET, publish

REFRESHER_THREADS = {"pointer-poll", "reload-signal", "reload-queue"}


@pytest.fixture
def bucket(aws_credentials: None) -> Iterator[Any]:
    with serving_bundles.models_bucket() as client:
        publish(client, serving_bundles.trained("iris", "iris"), "1")
        yield client


def _version(store: ModelStore) -> str | None:
    loaded = store.models.get("iris")
    return loaded.version if loaded else None


def _messages_left(sqs_client: Any, queue_url: str) -> int:
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def test_a_signal_reads_what_was_last_written_and_a_watch_sees_each_bump_once(tmp_path: Path) -> None:
    signal = ReloadSignal(tmp_path / "reload")
    watch = ReloadSignalWatch(signal)
    assert signal.read() is None and not watch.changed()

    signal.bump()
    assert watch.changed() and not watch.changed()
    signal.bump()
    signal.bump()
    assert watch.changed() and not watch.changed()
    # Renamed into place: no temporary file is left beside it.
    assert [path.name for path in tmp_path.iterdir()] == ["reload"]


def test_one_queue_message_reaches_every_worker_watching_the_signal(bucket: Any, tmp_path: Path) -> None:
    # GIVEN two workers' stores, watching one instance's signal, their poll far in the future
    sqs_client = boto3.client("sqs")
    queue_url = sqs_client.create_queue(QueueName="serving-reload")["QueueUrl"]
    signal = ReloadSignal(tmp_path / "reload")
    workers = [ModelStore(MODELS_BUCKET, max_batch=100) for _ in range(2)]
    for store in workers:
        store.start_background(poll_seconds=3600, reload_signal=signal, signal_check_seconds=0.01)
    # ...and the instance's one reader of the queue
    listener = QueueListener(queue_url, signal.bump, wait_seconds=1)
    listener.start()
    try:
        eventually(lambda: all(_version(store) == "1" for store in workers), 20, what="the first loads")

        # WHEN a new version is promoted, and its event is one message on the queue
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        sqs_client.send_message(QueueUrl=queue_url, MessageBody='{"detail-type": "ModelPromoted"}')

        # THEN both workers answer with it (SQS gave the message to the one reader), and it is deleted
        eventually(lambda: all(_version(store) == "2" for store in workers), 20, what="version 2 everywhere")
        eventually(lambda: not _messages_left(sqs_client, queue_url), 20, what="the hint deleted")
    finally:
        listener.stop(timeout=5)
        for store in workers:
            store.stop_background()
    assert not REFRESHER_THREADS & {thread.name for thread in threading.enumerate()}


def test_a_broken_queue_keeps_its_reader_trying_and_the_poll_still_refreshes(
    bucket: Any, tmp_path: Path
) -> None:
    signal = ReloadSignal(tmp_path / "reload")
    store = ModelStore(MODELS_BUCKET, max_batch=100)
    store.start_background(poll_seconds=0.05, reload_signal=signal)
    listener = QueueListener("https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue", signal.bump)
    listener.start()
    try:
        eventually(lambda: _version(store) == "1", 20, what="the first load")
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        eventually(lambda: _version(store) == "2", 20, what="version 2 from the poll")
        assert any(thread.name == "reload-queue" for thread in threading.enumerate())
        assert signal.read() is None  # nothing came through the broken queue
    finally:
        listener.stop(timeout=5)
        store.stop_background()
