"""How a reload hint reaches every worker of an instance: the reload queue's one reader bumps a signal
file, and every worker's store refreshes when it moves (serving/reload.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest

from serving.reload import QueueListener, ReloadSubscription, reload_queue_name
from serving.reload_signal import ReloadSignal, ReloadSignalWatch
from serving.store import ModelStore
from tests import serving_bundles
from tests.helpers import eventually
from tests.serving_bundles import MODELS_BUCKET, publish

ROOT = Path(__file__).resolve().parents[2]
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


def _emptied(sqs_client: Any, queue_url: str | None) -> bool:
    return queue_url is not None and not _messages_left(sqs_client, queue_url)


def _topic(name: str = "prod-serving-reload") -> str:
    return str(boto3.client("sns").create_topic(Name=name)["TopicArn"])


def _queues() -> list[str]:
    return list(boto3.client("sqs").list_queues().get("QueueUrls", []))


def test_one_event_reaches_every_instance_and_every_worker_of_each(bucket: Any, tmp_path: Path) -> None:
    # GIVEN two instances on one reload topic, each with its own queue, reader and signal, and two
    # workers' stores watching each signal, their poll far in the future
    topic = _topic()
    instances = []
    for member in ("i-0aaa", "i-0bbb"):
        signal = ReloadSignal(tmp_path / f"{member}.reload")
        subscription = ReloadSubscription(topic, partial(str, member))
        listener = QueueListener(subscription.open, signal.bump, wait_seconds=1)
        workers = [ModelStore(MODELS_BUCKET, max_batch=100) for _ in range(2)]
        for store in workers:
            store.start_background(poll_seconds=3600, reload_signal=signal, signal_check_seconds=0.01)
        listener.start()
        instances.append((subscription, listener, workers))
    every_worker = [store for *_, workers in instances for store in workers]
    try:
        eventually(lambda: all(_version(store) == "1" for store in every_worker), 20, what="the first loads")
        eventually(
            lambda: all(subscription.subscription_arn for subscription, *_ in instances),
            20,
            what="subscribed",
        )

        # WHEN a new version is promoted, and its event is published once to the topic
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        boto3.client("sns").publish(TopicArn=topic, Message='{"detail-type": "ModelPromoted"}')

        # THEN all four workers answer with it, and each instance's queue is emptied by its reader
        eventually(
            lambda: all(_version(store) == "2" for store in every_worker), 20, what="version 2 everywhere"
        )
        sqs_client = boto3.client("sqs")
        queue_urls = [subscription.queue_url for subscription, *_ in instances]
        assert [url.rsplit("/", 1)[-1] for url in queue_urls if url] == [
            "prod-serving-reload-i-0aaa",
            "prod-serving-reload-i-0bbb",
        ]
        for url in queue_urls:
            eventually(partial(_emptied, sqs_client, url), 20, what="the hint deleted")
    finally:
        for subscription, listener, workers in instances:
            listener.stop(timeout=5)
            subscription.close()
            for store in workers:
                store.stop_background()
    assert not REFRESHER_THREADS & {thread.name for thread in threading.enumerate()}
    # Each server's queue and subscription go with it
    assert _queues() == []
    assert boto3.client("sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_opening_twice_keeps_one_queue_and_one_subscription(aws_credentials: None) -> None:
    with serving_bundles.models_bucket():
        topic = _topic()
        subscription = ReloadSubscription(topic, lambda: "i-0abc")

        first, again = subscription.open(), subscription.open()

        assert first == again and _queues() == [first]
        assert first.endswith("/prod-serving-reload-i-0abc")
        assert len(boto3.client("sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1
        policy = json.loads(
            boto3.client("sqs").get_queue_attributes(QueueUrl=first, AttributeNames=["Policy"])["Attributes"][
                "Policy"
            ]
        )
        assert policy["Statement"][0]["Condition"] == {"ArnEquals": {"aws:SourceArn": topic}}


def test_a_queue_name_comes_from_the_topic_and_the_member_and_fits_sqs() -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:prod-serving-reload"
    assert reload_queue_name(topic, "i-0123456789abcdef0") == "prod-serving-reload-i-0123456789abcdef0"
    assert reload_queue_name(topic, "host.example:42") == "prod-serving-reload-host-example-42"
    with pytest.raises(ValueError, match="80 characters"):
        reload_queue_name(topic, "x" * 70)


def test_a_broken_queue_keeps_its_reader_trying_and_the_poll_still_refreshes(
    bucket: Any, tmp_path: Path
) -> None:
    signal = ReloadSignal(tmp_path / "reload")
    store = ModelStore(MODELS_BUCKET, max_batch=100)
    store.start_background(poll_seconds=0.05, reload_signal=signal)
    # A topic that does not exist: the subscription can never open
    subscription = ReloadSubscription("arn:aws:sns:us-east-1:123456789012:no-such-topic", lambda: "i-0abc")
    listener = QueueListener(subscription.open, signal.bump)
    listener.start()
    try:
        eventually(lambda: _version(store) == "1", 20, what="the first load")
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        eventually(lambda: _version(store) == "2", 20, what="version 2 from the poll")
        assert any(thread.name == "reload-queue" for thread in threading.enumerate())
        assert signal.read() is None  # nothing came through the broken subscription
    finally:
        listener.stop(timeout=5)
        subscription.close()
        store.stop_background()


def test_the_lambda_function_imports_neither_sns_nor_the_queue_reader() -> None:
    # The serving function's package holds only what it imports (the Makefile's SERVING_SOURCES)
    probe = (
        "import sys, serving.lambda_handler; "
        "print(sorted(m for m in ('serving.reload', 'common.adapters.sns') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"
