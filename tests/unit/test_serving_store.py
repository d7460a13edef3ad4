"""The model store: cheap refreshes, atomic swaps, refused bundles, and the ways a refresh is started."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from common.adapters import s3
from common.bundles import bundle_onnx_key
from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.helpers import eventually
from tests.serving_bundles import MODELS_BUCKET, publish

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def bucket(aws_credentials: None) -> Iterator[Any]:
    with serving_bundles.models_bucket() as client:
        publish(client, serving_bundles.trained("iris", "iris"), "1")
        yield client


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every S3 call the store makes, in order: 'list <prefix>' or 'get <key>'."""
    made: list[str] = []
    list_objects, get_bytes = s3.list_objects, s3.get_bytes

    def listing(bucket: str, prefix: str) -> list[tuple[str, str]]:
        made.append(f"list {prefix}")
        return list_objects(bucket, prefix)

    def getting(bucket: str, key: str) -> tuple[bytes, str] | None:
        made.append(f"get {key}")
        return get_bytes(bucket, key)

    monkeypatch.setattr(s3, "list_objects", listing)
    monkeypatch.setattr(s3, "get_bytes", getting)
    return made


def _store() -> ModelStore:
    return ModelStore(MODELS_BUCKET, max_batch=100)


def _version(store: ModelStore, model: str = "iris") -> str | None:
    loaded = store.models.get(model)
    return loaded.version if loaded else None


def _sample(store: ModelStore, name: str, model: str = "iris") -> float | None:
    return store.registry.get_sample_value(name, {"model": model})


def test_a_refresh_lists_once_and_fetches_only_the_pointers_that_moved(bucket: Any, calls: list[str]) -> None:
    store = _store()

    store.refresh()
    first = list(calls)
    calls.clear()
    store.refresh()
    unchanged = list(calls)
    calls.clear()
    publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    store.refresh()

    assert first == [
        "list pointers/",
        "get pointers/iris.json",
        "get bundles/iris/1/bundle.json",
        "get bundles/iris/1/model.onnx",
    ]
    assert unchanged == ["list pointers/"]
    assert calls == [
        "list pointers/",
        "get pointers/iris.json",
        "get bundles/iris/2/bundle.json",
        "get bundles/iris/2/model.onnx",
    ]
    assert _version(store) == "2"


def test_a_snapshot_is_replaced_never_changed(bucket: Any) -> None:
    store = _store()
    store.refresh()
    before = store.models

    publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    store.refresh()

    assert before["iris"].version == "1"  # what a request holding the old snapshot still sees
    assert store.models is not before and store.models["iris"].version == "2"


def test_a_removed_pointer_stops_serving_its_model(bucket: Any) -> None:
    store = _store()
    store.refresh()

    bucket.delete_object(Bucket=MODELS_BUCKET, Key="pointers/iris.json")
    store.refresh()

    assert "iris" not in store.models
    assert store.readiness().ready


def test_the_same_bundle_promoted_again_keeps_its_session(bucket: Any) -> None:
    store = _store()
    store.refresh()
    session = store.models["iris"].session

    manifest = serving_bundles.manifest_of(serving_bundles.trained("iris", "iris"), "1")
    pointer = serving_bundles.pointer_to(manifest, promoted_at="2026-12-01T00:00:00Z")
    bucket.put_object(Bucket=MODELS_BUCKET, Key="pointers/iris.json", Body=pointer.model_dump_json())
    store.refresh()

    assert store.models["iris"].session is session
    assert store.models["iris"].pointer.promoted_at == "2026-12-01T00:00:00Z"


def test_a_transient_failure_is_retried_at_the_next_refresh(
    bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    get_bytes = s3.get_bytes

    def flaky(bucket_name: str, key: str) -> tuple[bytes, str] | None:
        if key == bundle_onnx_key("iris", "1"):
            raise ConnectionError("S3 is unreachable")
        return get_bytes(bucket_name, key)

    store = _store()
    monkeypatch.setattr(s3, "get_bytes", flaky)
    store.refresh()
    failed = store.readiness()
    monkeypatch.setattr(s3, "get_bytes", get_bytes)
    store.refresh()

    assert not failed.ready and "S3 is unreachable" in failed.missing["iris"]
    assert _sample(store, "arrival_model_reload_failures_total") == 1
    assert _version(store) == "1" and store.readiness().ready


def test_a_refused_bundle_is_not_fetched_again_until_its_pointer_moves(bucket: Any, calls: list[str]) -> None:
    model = serving_bundles.trained("iris", "iris")
    store = _store()
    store.refresh()
    publish(bucket, model, "2", onnx=model.onnx + b"tampered")

    store.refresh()
    calls.clear()
    store.refresh()
    again = list(calls)
    publish(bucket, model, "3")
    store.refresh()

    assert again == ["list pointers/"]
    assert _sample(store, "arrival_model_reload_failures_total") == 1
    assert _sample(store, "arrival_model_reloads_total") == 2
    assert _version(store) == "3" and store.readiness().ready


def test_a_reload_queue_message_makes_the_server_refresh_at_once(bucket: Any) -> None:
    sqs_client = boto3.client("sqs")
    queue_url = sqs_client.create_queue(QueueName="serving-reload")["QueueUrl"]
    store = _store()
    # A poll far in the future: only the queue can bring version 2 in.
    store.start_background(poll_seconds=3600, reload_queue_url=queue_url, queue_wait_seconds=1)
    try:
        eventually(lambda: _version(store) == "1", timeout=20, what="the first load")
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        sqs_client.send_message(QueueUrl=queue_url, MessageBody='{"detail-type": "ModelPromoted"}')

        eventually(lambda: _version(store) == "2", timeout=20, what="version 2 after the hint")
        eventually(lambda: not _messages_left(sqs_client, queue_url), timeout=20, what="the hint deleted")
    finally:
        store.stop_background()
    assert not [thread for thread in threading.enumerate() if thread.name in {"pointer-poll", "reload-queue"}]


def _messages_left(sqs_client: Any, queue_url: str) -> int:
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def test_the_poll_refreshes_without_a_queue_and_a_broken_queue_does_not_stop_it(bucket: Any) -> None:
    store = _store()
    missing_queue = "https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue"
    store.start_background(poll_seconds=0.05, reload_queue_url=missing_queue, queue_wait_seconds=1)
    try:
        eventually(lambda: _version(store) == "1", timeout=20, what="the first load")
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        eventually(lambda: _version(store) == "2", timeout=20, what="version 2 from the poll")
        assert any(thread.name == "reload-queue" for thread in threading.enumerate())
    finally:
        store.stop_background()


def test_the_server_starts_and_stops_its_refreshers_with_the_app(bucket: Any) -> None:
    settings = ServingSettings(models_bucket=MODELS_BUCKET, poll_seconds=0.05)

    with TestClient(create_app(settings, store=_store(), api_key=None)) as client:
        eventually(lambda: client.get("/ready").status_code == 200, timeout=20, what="ready")
        running = {thread.name for thread in threading.enumerate()}

    assert "pointer-poll" in running
    assert "pointer-poll" not in {thread.name for thread in threading.enumerate()}


def test_in_lambda_a_request_checks_the_pointers_at_most_every_few_seconds(bucket: Any) -> None:
    store = _store()
    app = create_app(
        ServingSettings(models_bucket=MODELS_BUCKET, lambda_check_seconds=3600),
        store=store,
        mode="lambda",
        api_key=None,
    )
    client = TestClient(app)

    first = client.post("/models/iris/predict", json=IRIS_RECORD)
    publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    second = client.post("/models/iris/predict", json=IRIS_RECORD)
    store.refresh()  # what the next check, once the interval is over, does
    third = client.post("/models/iris/predict", json=IRIS_RECORD)

    assert [r.headers["X-Model-Version"] for r in (first, second, third)] == ["1", "1", "2"]
    assert not any(thread.name == "pointer-poll" for thread in threading.enumerate())


def test_in_lambda_a_stale_check_refreshes_before_answering(bucket: Any) -> None:
    store = _store()
    app = create_app(
        ServingSettings(models_bucket=MODELS_BUCKET, lambda_check_seconds=0),
        store=store,
        mode="lambda",
        api_key=None,
    )
    client = TestClient(app)

    first = client.post("/models/iris/predict", json=IRIS_RECORD)
    publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    second = client.post("/models/iris/predict", json=IRIS_RECORD)

    assert [r.headers["X-Model-Version"] for r in (first, second)] == ["1", "2"]
