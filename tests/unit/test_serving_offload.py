"""Large predictions off the event loop: a batch over `offload_body_bytes` is answered in a worker
thread while the loop keeps answering others, within a time budget whose overrun is a 503 with a
problem, never a hang; and the server's shutdown writes its captures first and fits in the instance's
SIGTERM-to-SIGKILL window."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from common.bundle_loader import InputBuilder, RowCost
from serving import app as serving_app
from serving import main as serving_main
from serving import shutdown
from serving.capture import CaptureWriter
from serving.schemas import RequestSchemas
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
CAPTURE_BUCKET = "unit-offload-capture"
# A batch of 300 iris records is about 27 kB: over this, it is answered in a worker thread.
OFFLOAD_BYTES = 4096
BIG = {"records": [IRIS_RECORD] * 300}
# Each case is answered in seconds at most; this turns a hang (or the old 30 s joins) into a failure.
pytestmark = pytest.mark.timeout(20)


class HeldModel:
    """The model's input builder, held for batches of more than one record until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[str] = []
        self.runs = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real: Callable[..., Any] = InputBuilder.__call__

        def held(builder: InputBuilder, records: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            if len(records) > 1:
                self.runs += 1
                self.entered.set()
                self.release.wait(5)  # never for ever: a test of the old code must fail, not hang
            return real(builder, records)

        monkeypatch.setattr(InputBuilder, "__call__", held)


@pytest.fixture
def published(aws_credentials: None) -> Iterator[Any]:
    with serving_bundles.models_bucket() as s3:
        s3.create_bucket(Bucket=CAPTURE_BUCKET)
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        yield s3


def build(**settings: Any) -> tuple[FastAPI, ModelStore]:
    values = {
        "models_bucket": MODELS_BUCKET,
        "max_batch": 1000,
        "offload_body_bytes": OFFLOAD_BYTES,
        "offload_above_seconds": 0,  # every body over OFFLOAD_BYTES, whatever the model's cost
        "poll_seconds": 60,
        **settings,
    }
    store = ModelStore(MODELS_BUCKET, max_batch=values["max_batch"])
    app = serving_app.create_app(ServingSettings(**values), store=store, api_key=None)
    store.refresh()
    return app, store


async def _health_while_a_batch_runs(app: FastAPI, held: HeldModel) -> tuple[bool, httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
        batch = asyncio.create_task(client.post("/models/iris/predict", json=BIG))
        for _ in range(500):  # until the model holds the batch (5 s at most)
            if held.entered.is_set():
                break
            await asyncio.sleep(0.01)
        health = await client.get("/health")
        batch_was_running = not batch.done()
        held.release.set()
        answered = await batch
    assert health.status_code == 200
    return batch_was_running, answered


def test_health_answers_while_a_large_batch_runs(published: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a model that holds a large batch until told to go on
    app, _ = build()
    held = HeldModel()
    held.install(monkeypatch)

    # WHEN /health is asked while the batch is held
    batch_was_running, answered = asyncio.run(_health_while_a_batch_runs(app, held))

    # THEN /health was answered before the batch was, which still got its answer
    assert batch_was_running
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 300
    assert held.threads[-1].startswith("predict")


def test_a_small_request_stays_on_the_event_loop(published: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = build()
    held = HeldModel()
    held.install(monkeypatch)

    assert TestClient(app).post("/models/iris/predict", json=IRIS_RECORD).status_code == 200

    assert not held.threads[-1].startswith("predict")


def test_a_batch_goes_to_a_worker_by_its_models_cost_not_its_size_alone(published: Any) -> None:
    # GIVEN the model as loaded: the load priced one of its rows
    _, store = build()
    loaded = store.models["iris"]
    assert loaded.row_cost is not None
    assert loaded.row_cost.inference_seconds > 0 and 20 < loaded.row_cost.request_bytes < 200

    def priced(inference_seconds: float | None) -> float:
        cost = None if inference_seconds is None else RowCost(inference_seconds, request_bytes=322)
        return serving_app.estimated_seconds(replace(loaded, row_cost=cost), 322_000)

    # THEN 1,000 records at a linear model's cost (0.17 us a row) stay on the loop, at a forest's
    # (9.4 us a row) they go to a worker, as do those of a model never priced
    limit = ServingSettings.model_fields["offload_above_seconds"].default
    assert priced(0.17e-6) < limit < priced(9.4e-6) < priced(None)


def test_a_large_batch_over_its_time_budget_is_a_503_with_a_problem_and_is_not_captured(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a budget of 0.3 s, capture of every request, and a model that holds the batch longer
    app, _ = build(request_budget_seconds=0.3, capture_bucket=CAPTURE_BUCKET, capture_rate=1.0)
    held = HeldModel()
    held.install(monkeypatch)
    client = TestClient(app)

    # WHEN the batch is sent
    response = client.post("/models/iris/predict", json=BIG)
    held.release.set()

    # THEN the client gets a 503 naming the rule, without waiting for the model
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    (problem,) = response.json()["detail"]
    assert problem["rule"] == "over_time_budget" and "0.3 s" in problem["message"]
    metrics = client.get("/metrics").text
    assert 'arrival_request_errors_total{model="iris",route="predict",rule="over_time_budget"} 1.0' in metrics
    # AND the answer the worker finishes later is thrown away, not captured
    app.state.offloaded.shutdown()
    app.state.offloaded._executor.shutdown(wait=True)
    assert app.state.capture.flush() == 0


def test_a_batch_still_queued_when_its_budget_ends_never_runs(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN one worker thread, held by a first batch
    app, _ = build(request_budget_seconds=0.5, predict_threads=1)
    held = HeldModel()
    held.install(monkeypatch)

    async def two_batches() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            first = asyncio.create_task(client.post("/models/iris/predict", json=BIG))
            second = asyncio.create_task(client.post("/models/iris/predict", json=BIG))
            answers = await asyncio.gather(first, second)
            return answers[0], answers[1]

    # WHEN a second batch waits behind it past its budget
    first, second = asyncio.run(two_batches())
    held.release.set()
    app.state.offloaded._executor.shutdown(wait=True)

    # THEN both are 503s, and the model only ever saw the first
    assert first.status_code == second.status_code == 503
    assert held.runs == 1


def test_a_large_batchs_refusals_and_failures_are_answered_as_on_the_loop(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = build()
    client = TestClient(app)
    records: list[dict[str, Any]] = [IRIS_RECORD] * 300
    records[144] = {**IRIS_RECORD, "petal_length": "long"}

    refused = client.post("/models/iris/predict", json={"records": records})

    assert refused.status_code == 422
    assert [(p["field"], p["rule"]) for p in refused.json()["detail"]] == [
        ("records[144].petal_length", "float_type")
    ]

    def broken(*_: Any) -> Any:
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(InputBuilder, "__call__", broken)
    failed = client.post("/models/iris/predict", json=BIG)
    assert failed.status_code == 500 and failed.json()["detail"][0]["rule"] == "internal_error"


@pytest.mark.parametrize("route", ["predict", "invocations"])
def test_a_batch_answered_in_parts_gets_the_answers_and_refusals_of_one_answered_whole(
    published: Any, route: str
) -> None:
    # GIVEN the same model answering every body on the loop, whole, and large ones in a worker, in parts
    whole = TestClient(build(max_batch=5000, offload_body_bytes=10**9)[0])
    in_parts = TestClient(build(max_batch=5000)[0])
    frame = serving_bundles.trained("iris", "iris").frame
    rows = serving_bundles.request_records(frame, serving_bundles.trained("iris", "iris").contract)
    records = (rows * 25)[:4500]
    key = "records" if route == "predict" else "instances"

    def both(body: bytes) -> tuple[Any, Any]:
        headers = {"content-type": "application/json"}
        answers = [
            client.post(f"/models/iris/{route}", content=body, headers=headers)
            for client in (whole, in_parts)
        ]
        return answers[0], answers[1]

    # WHEN valid and invalid batches of 4,500 records are sent to both
    valid = both(json.dumps({key: records}).encode())
    wrong = [*records[:3210], {**records[3210], "petal_length": "long"}, *records[3211:]]
    invalid = both(json.dumps({key: wrong}).encode())
    nan = both(json.dumps({key: records}).encode().replace(b"5.1", b"NaN", 1))
    extra = both(json.dumps({key: records, "more": 1}).encode())

    # THEN both answer alike
    assert valid[0].status_code == 200 and len(valid[0].json()["predictions"]) == 4500
    for one_whole, one_in_parts in (valid, invalid, nan, extra):
        assert (one_in_parts.status_code, one_in_parts.json()) == (one_whole.status_code, one_whole.json())
    assert invalid[0].json()["detail"][0]["field"] == f"{key}[3210].petal_length"
    assert nan[0].status_code in (400, 422) and extra[0].status_code in (400, 422)


def test_a_large_batchs_onnx_runs_go_two_at_a_time_on_two_threads(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = build(max_batch=5000)
    held = HeldModel()
    held.release.set()
    held.install(monkeypatch)

    answered = TestClient(app).post("/models/iris/predict", json={"records": [IRIS_RECORD] * 4500})

    # THEN three runs (2,000, 2,000 and 500 rows): the worker's and, beside it, a helper's
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 4500
    assert held.runs == 3
    assert {name.rsplit("_", 1)[0] for name in held.threads} == {"predict", "predict-part"}


def test_a_valid_large_batch_is_validated_in_parts_never_whole(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a record of every validation of a whole predict body
    whole: list[int] = []
    decode = RequestSchemas.decode_predict_body

    def spy(schemas: RequestSchemas, body: bytes) -> Any:
        whole.append(len(body))
        return decode(schemas, body)

    monkeypatch.setattr(RequestSchemas, "decode_predict_body", spy)
    client = TestClient(build(max_batch=5000)[0])

    # WHEN a valid batch of 2,500 records, then an invalid one, are answered in a worker
    valid = client.post("/models/iris/predict", json={"records": [IRIS_RECORD] * 2500})
    invalid = client.post("/models/iris/predict", json={"records": [IRIS_RECORD] * 2499 + [{}]})

    # THEN the valid one was validated a thousand records at a time; only the invalid one whole, for
    # its errors
    assert valid.status_code == 200 and invalid.status_code == 422
    assert len(whole) == 1


def test_shutdown_writes_the_captures_before_it_joins_the_store_threads(published: Any) -> None:
    # GIVEN the server's lifespan, capturing every request, with one request waiting to be written
    app, store = build(capture_bucket=CAPTURE_BUCKET, capture_rate=1.0, capture_flush_seconds=3600)
    captured_when_joined: list[int] = []
    stop_background = store.stop_background

    def joined(timeout: float = 30) -> None:
        listed = published.list_objects_v2(Bucket=CAPTURE_BUCKET).get("KeyCount", 0)
        captured_when_joined.append(listed)
        stop_background(timeout=timeout)

    store.stop_background = joined  # type: ignore[method-assign]
    with TestClient(app) as client:
        assert client.post("/models/iris/predict", json=IRIS_RECORD).status_code == 200

    # THEN the capture was in S3 by the time the store's threads were joined
    assert captured_when_joined == [1]


def test_shutdown_fits_in_the_window_with_hung_threads_and_a_hung_s3(
    published: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a refresher that never stops and a capture write that never returns
    never = threading.Event()

    def hung_refresh(*_: Any) -> None:
        never.wait(60)

    def hung_put(*_: Any, **__: Any) -> None:
        never.wait(60)

    monkeypatch.setattr(ModelStore, "_poll", hung_refresh)
    monkeypatch.setattr(CaptureWriter, "_write", hung_put)
    app, _ = build(capture_bucket=CAPTURE_BUCKET, capture_rate=1.0, capture_flush_seconds=3600)

    # WHEN the server shuts down with a capture waiting (the timeout mark fails a shutdown that hangs)
    with TestClient(app) as client:
        assert client.post("/models/iris/predict", json=IRIS_RECORD).status_code == 200
    never.set()

    # THEN the shutdown's own bounds fit the 10 s between the agent's SIGTERM and its SIGKILL
    bounds = shutdown.GRACEFUL_SHUTDOWN_SECONDS + shutdown.CAPTURE_SHUTDOWN_SECONDS
    assert bounds + 2 * shutdown.STORE_THREAD_JOIN_SECONDS + shutdown.READER_JOIN_SECONDS < 10


def test_uvicorn_waits_a_bounded_time_for_the_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serving_main, "run_workers", lambda config, _listener: seen.update(config=config))

    serving_main.serve(ServingSettings(models_bucket=MODELS_BUCKET), serving_main.UNCHECKED_APP)

    assert seen["config"].timeout_graceful_shutdown == shutdown.GRACEFUL_SHUTDOWN_SECONDS


def test_the_budget_and_offload_settings_have_sane_defaults() -> None:
    settings = ServingSettings(models_bucket=MODELS_BUCKET)
    assert settings.offload_body_bytes == 16 * 1024
    assert settings.request_budget_seconds == 5
    assert settings.capture_max_queued_bytes == 32 * 1024 * 1024
    assert settings.predict_threads == 2
