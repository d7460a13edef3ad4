"""The model store: cheap refreshes, atomic swaps, refused bundles, per-model readiness, and the ways a
refresh is started."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from common.adapters import s3
from common.bundles import bundle_manifest_key, bundle_onnx_key
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


class FakeClock:
    """The store's monotonic clock, moved by hand: backoff without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(clock: FakeClock | None = None) -> ModelStore:
    if clock is None:
        return ModelStore(MODELS_BUCKET, max_batch=100)
    return ModelStore(MODELS_BUCKET, max_batch=100, clock=clock)


def _tampered(bucket: Any, base: str, name: str, version: str) -> None:
    """A bundle that fails its check: the ONNX bytes are not the manifest's."""
    model = serving_bundles.trained(base, name)
    publish(bucket, model, version, onnx=model.onnx + b"tampered")


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


# Readiness is per model: every instance lists the same bucket, so whatever one model's pointer or bundle
# does to one instance it does to all, and a load balancer would pull every one of them at once.


def test_a_failed_listing_keeps_the_instance_ready_on_the_last_good_one(
    bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store()
    store.refresh()

    def slow_down(bucket_name: str, prefix: str) -> list[tuple[str, str]]:
        raise ClientError(
            {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "List"
        )

    monkeypatch.setattr(s3, "list_objects", slow_down)
    with pytest.raises(ClientError):
        store.refresh()
    readiness = store.readiness()

    assert readiness.ready and readiness.reason is None
    assert readiness.listing is not None and "SlowDown" in readiness.listing
    assert _version(store) == "1"


def test_one_models_refused_first_bundle_leaves_the_instance_ready(bucket: Any) -> None:
    _tampered(bucket, "house-prices", "house-prices", "7")
    store = _store()

    store.refresh()
    readiness = store.readiness()
    pending = store.pending("house-prices")

    assert readiness.ready and _version(store) == "1"
    assert (
        "version 7 refused" in readiness.missing["house-prices"]
        and "sha256" in readiness.missing["house-prices"]
    )
    assert pending is not None and (pending.version, pending.cause, pending.next_try) == (
        "7",
        "refused",
        "when its pointer changes",
    )


def test_a_malformed_pointer_leaves_the_instance_ready(bucket: Any) -> None:
    bucket.put_object(Bucket=MODELS_BUCKET, Key="pointers/house-prices.json", Body=b'{"model": "house-pri')
    store = _store()

    store.refresh()
    readiness = store.readiness()

    assert readiness.ready and _version(store) == "1"
    assert "pointers/house-prices.json refused" in readiness.missing["house-prices"]


def test_a_stray_copy_of_a_pointer_leaves_the_instance_ready(bucket: Any) -> None:
    iris_pointer = bucket.get_object(Bucket=MODELS_BUCKET, Key="pointers/iris.json")["Body"].read()
    bucket.put_object(Bucket=MODELS_BUCKET, Key="pointers/iris-backup.json", Body=iris_pointer)
    store = _store()

    store.refresh()
    readiness = store.readiness()

    assert readiness.ready and sorted(store.models) == ["iris"]
    assert "names the model 'iris'" in readiness.missing["iris-backup"]


def test_the_instance_is_unready_only_when_the_first_load_of_every_model_failed(bucket: Any) -> None:
    never_listed = _store().readiness()
    _tampered(bucket, "iris", "iris", "2")
    only_a_refused_model = _store()
    only_a_refused_model.refresh()

    readiness = only_a_refused_model.readiness()

    assert not never_listed.ready and never_listed.missing == {
        "pointers": "the pointers have not been listed yet"
    }
    assert not readiness.ready and readiness.reason is not None and "iris" in readiness.reason


def test_keys_that_are_no_pointer_are_ignored_with_one_warning_each(
    bucket: Any, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    strays = ["pointers/iris.json.bak", "pointers/old/iris.json", "pointers/Iris.json", "pointers/notes.txt"]
    for key in strays:
        bucket.put_object(Bucket=MODELS_BUCKET, Key=key, Body=b"{}")
    store = _store()

    with caplog.at_level(logging.WARNING, logger="arrival.serving"):
        store.refresh()
        store.refresh()
    warned = [record.getMessage() for record in caplog.records if "not a pointer" in record.getMessage()]
    readiness = store.readiness()

    expected = "ignored a key that is not a pointer: s3://{}/{} (a pointer is pointers/<model>.json)"
    assert sorted(warned) == sorted(expected.format(MODELS_BUCKET, key) for key in strays)
    assert not any(call.startswith("get") and call.removeprefix("get ") in strays for call in calls)
    assert readiness.ready and readiness.missing == {} and sorted(store.models) == ["iris"]


def test_a_pointer_seen_before_its_bundle_is_loaded_once_the_bundle_arrives(
    bucket: Any, calls: list[str]
) -> None:
    # GIVEN version 1 serving, and a pointer to version 2 visible before version 2's bundle
    clock = FakeClock()
    store = _store(clock)
    store.refresh()
    model = serving_bundles.trained("iris", "iris")
    manifest = serving_bundles.manifest_of(model, "2")
    pointer = serving_bundles.pointer_to(manifest)
    bucket.put_object(Bucket=MODELS_BUCKET, Key="pointers/iris.json", Body=pointer.model_dump_json())

    # WHEN the store looks, then the bundle arrives
    store.refresh()
    first = store.pending("iris")
    bucket.put_object(Bucket=MODELS_BUCKET, Key=manifest.onnx.key, Body=model.onnx)
    bucket.put_object(
        Bucket=MODELS_BUCKET, Key=bundle_manifest_key("iris", "2"), Body=manifest.model_dump_json()
    )
    calls.clear()
    store.refresh()  # too soon: the backoff holds it back
    too_soon = list(calls)
    clock.now += 1
    store.refresh()

    # THEN version 1 answers meanwhile, and version 2 once its bundle is there
    assert first is not None and (first.version, first.cause, first.next_try) == ("2", "missing", "in 1 s")
    assert "no manifest at" in first.reason and store.readiness().ready
    assert too_soon == ["list pointers/"]
    assert _version(store) == "2" and store.pending("iris") is None
    assert store.readiness().stale == {}


def test_a_missing_bundle_is_looked_for_less_and_less_often(bucket: Any, calls: list[str]) -> None:
    clock = FakeClock()
    store = _store(clock)
    store.refresh()
    manifest = serving_bundles.manifest_of(serving_bundles.trained("iris", "iris"), "9")
    bucket.put_object(
        Bucket=MODELS_BUCKET,
        Key="pointers/iris.json",
        Body=serving_bundles.pointer_to(manifest).model_dump_json(),
    )

    looked_at: list[float] = []
    start = clock.now
    while clock.now < start + 190:
        calls.clear()
        store.refresh()
        if "get bundles/iris/9/bundle.json" in calls:
            looked_at.append(clock.now - start)
        clock.now += 0.5
    pending = store.pending("iris")

    assert looked_at == [0, 1, 3, 7, 15, 31, 63, 123, 183]  # 1, 2, 4 ... 32 s apart, then every minute
    assert pending is not None and pending.failures == 9 and pending.cause == "missing"
    assert _version(store) == "1"


def test_a_swap_freezes_nothing_so_garbage_cycles_are_still_collected(bucket: Any) -> None:
    """gc.freeze() at every swap froze whatever cycles were garbage at that moment, for good."""

    class Cycle:
        me: Cycle | None = None

    def garbage_cycle() -> weakref.ref[Cycle]:
        cycle = Cycle()
        cycle.me = cycle
        return weakref.ref(cycle)

    store = _store()
    gc.disable()  # no automatic collection may free the cycles before the store gets to them
    try:
        before_first_load = garbage_cycle()
        store.refresh()
        before_swap = garbage_cycle()
        publish(bucket, serving_bundles.trained("iris", "iris"), "2")
        store.refresh()
        gc.collect()
    finally:
        gc.enable()

    assert _version(store) == "2"
    assert before_first_load() is None and before_swap() is None


def test_a_models_pending_version_and_its_reason_are_in_its_description(bucket: Any) -> None:
    store = _store()
    store.refresh()
    _tampered(bucket, "iris", "iris", "2")
    _tampered(bucket, "house-prices", "house-prices", "7")
    publish(bucket, serving_bundles.trained("iris", "flowers"), "3")
    store.refresh()
    client = TestClient(create_app(ServingSettings(models_bucket=MODELS_BUCKET), store=store, api_key=None))

    stale = client.get("/models/iris")
    not_loaded = client.get("/models/house-prices")
    current = client.get("/models/flowers")
    ready = client.get("/ready")

    assert stale.status_code == 200 and stale.json()["version"] == "1"
    assert stale.json()["pending"] == {
        "version": "2",
        "cause": "refused",
        "reason": stale.json()["pending"]["reason"],
        "failures": 1,
        "next_try": "when its pointer changes",
    }
    assert "version 2 refused" in stale.json()["pending"]["reason"]
    assert not_loaded.status_code == 503 and not_loaded.json()["pending"]["version"] == "7"
    assert current.json()["pending"] is None
    assert ready.status_code == 200
    assert ready.json()["stale"] == {"iris": stale.json()["pending"]["reason"]}
    assert list(ready.json()["missing"]) == ["house-prices"]


def test_a_malformed_manifest_is_refused_until_the_pointer_changes(bucket: Any, calls: list[str]) -> None:
    store = _store()
    store.refresh()
    manifest = publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    bucket.put_object(Bucket=MODELS_BUCKET, Key=bundle_manifest_key("iris", "2"), Body=b'{"model": "iris"}')

    store.refresh()
    calls.clear()
    store.refresh()
    pending = store.pending("iris")

    assert pending is not None and (pending.version, pending.cause) == ("2", "refused")
    assert calls == ["list pointers/"] and _version(store) == "1" and manifest.version == "2"


def test_a_lazy_store_keeps_up_to_date_only_the_models_it_was_asked_for(
    bucket: Any, calls: list[str]
) -> None:
    publish(bucket, serving_bundles.trained("house-prices", "house-prices"), "7")
    store = ModelStore(MODELS_BUCKET, max_batch=100, lazy=True)
    store.refresh()
    store.load_when_asked(["iris", "no-such-model"])
    publish(bucket, serving_bundles.trained("iris", "iris"), "2")
    publish(bucket, serving_bundles.trained("house-prices", "house-prices"), "8")
    calls.clear()

    store.refresh()

    assert calls == [
        "list pointers/",
        "get pointers/iris.json",
        "get bundles/iris/2/bundle.json",
        "get bundles/iris/2/model.onnx",
    ]
    assert sorted(store.models) == ["iris"] and _version(store) == "2"
    assert store.readiness().unloaded == ["house-prices"] and store.readiness().ready
