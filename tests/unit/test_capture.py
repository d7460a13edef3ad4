"""Data capture: sampled requests and their predictions reach S3 as gzip JSON Lines, off the request
path, at the contract's or the server's rate; a full queue drops and counts, a failed write is counted,
and neither ever fails a request. In Lambda, an invocation writes what it sampled before it returns."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common.contracts import DataContract
from serving import capture as capture_module
from serving import lambda_handler
from serving.app import create_app
from serving.capture import CaptureWriter
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.helpers import eventually
from tests.serving_bundles import MODELS_BUCKET, publish
from tests.unit.conftest import FakeLambdaContext, load_event

CAPTURE_BUCKET = "unit-capture"
IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
HOUSE_RECORD = {"area_m2": 120.0, "rooms": 5, "year_built": None, "district": "north", "heating": None}


def _with_sample_rate(contract: DataContract, rate: float) -> DataContract:
    document = contract.model_dump(mode="json")
    document["monitoring"]["sample_rate"] = rate
    return DataContract.model_validate(document)


def _publish(s3: Any, base: str, version: str, sample_rate: float) -> None:
    model = serving_bundles.trained(base, base)
    manifest = serving_bundles.manifest_of(model, version)
    contract = _with_sample_rate(model.contract, sample_rate)
    publish(s3, model, version, manifest=manifest.model_copy(update={"contract": contract}))


@dataclass
class Captured:
    s3: Any

    def app(self, **settings: Any) -> TestClient:
        # A store per app: an app's metrics go to its store's registry.
        store = ModelStore(MODELS_BUCKET, max_batch=50)
        values = {"models_bucket": MODELS_BUCKET, "capture_bucket": CAPTURE_BUCKET, **settings}
        client = TestClient(create_app(ServingSettings(**values), store=store, api_key=None))
        store.refresh()
        return client

    def keys(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=CAPTURE_BUCKET).get("Contents", [])
        return sorted(entry["Key"] for entry in listed)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for key in self.keys():
            body = gzip.decompress(self.s3.get_object(Bucket=CAPTURE_BUCKET, Key=key)["Body"].read())
            found += [json.loads(line) for line in body.splitlines()]
        return found


@pytest.fixture
def captured(aws_credentials: None) -> Iterator[Captured]:
    with serving_bundles.models_bucket() as s3:
        s3.create_bucket(Bucket=CAPTURE_BUCKET)
        _publish(s3, "iris", "3", sample_rate=1.0)
        _publish(s3, "house-prices", "7", sample_rate=0.0)
        yield Captured(s3)


def _metric(client: TestClient, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{" if labels else f"{name} ") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


def test_a_sampled_request_is_written_with_its_prediction_version_and_request_id(
    captured: Captured,
) -> None:
    # GIVEN a model whose contract captures every request
    client = captured.app()

    # WHEN a client asks for one prediction and a batch of two
    single = client.post("/models/iris/predict", json=IRIS_RECORD, headers={"x-request-id": "req-1"})
    batch = client.post(
        "/models/iris/predict", json={"records": [IRIS_RECORD, {**IRIS_RECORD, "petal_width": 2.0}]}
    )
    assert single.status_code == batch.status_code == 200
    # THEN nothing is written on the request path...
    assert captured.keys() == []
    written = client.app.state.capture.flush()  # type: ignore[attr-defined]

    # ...and a flush writes one gzip JSON Lines object under the model's hour, a line per request
    assert written == 3
    (key,) = captured.keys()
    assert key.startswith("iris/capture/20") and key.endswith(".jsonl.gz")
    assert len(key.split("/")) == 7  # iris/capture/yyyy/mm/dd/hh/<uuid>.jsonl.gz
    first, second = captured.lines()
    assert first["inputs"] == [IRIS_RECORD]
    assert (first["model"], first["version"], first["request_id"]) == ("iris", "3", "req-1")
    assert first["predictions"] == [single.json()["prediction"]]
    assert first["classes"] == ["setosa", "versicolor", "virginica"]
    (probabilities,) = first["probabilities"]
    assert dict(zip(first["classes"], probabilities, strict=True)) == pytest.approx(
        single.json()["probabilities"]
    )
    assert first["time"].endswith("+00:00") and first["time"][:4] == key.split("/")[2]
    # a batch is one line: its request id (one generated when the client sends none) is written once
    assert second["request_id"] != "req-1" and len(second["inputs"]) == 2
    assert second["predictions"] == batch.json()["predictions"]
    assert _metric(client, "arrival_capture_records_total", model="iris", outcome="written") == 3


def test_a_batchs_request_id_is_written_once_not_on_every_record(captured: Captured) -> None:
    # GIVEN a long request id on a batch of 40 records
    client = captured.app()
    request_id = "r" * 8192

    client.post(
        "/models/iris/predict", json={"records": [IRIS_RECORD] * 40}, headers={"x-request-id": request_id}
    )
    client.app.state.capture.flush()  # type: ignore[attr-defined]

    # THEN the capture holds the id once: one line, about the size of the records and the id
    (line,) = captured.lines()
    assert line["request_id"] == request_id and len(line["inputs"]) == 40
    (key,) = captured.keys()
    text = gzip.decompress(captured.s3.get_object(Bucket=CAPTURE_BUCKET, Key=key)["Body"].read())
    assert text.count(request_id.encode()) == 1


def test_serialisation_happens_off_the_request_path(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a record of the threads that turn captures into JSON
    serialising_threads: list[str] = []
    real = capture_module.capture_line

    def spy(*arguments: Any) -> bytes:
        serialising_threads.append(threading.current_thread().name)
        return real(*arguments)

    monkeypatch.setattr(capture_module, "capture_line", spy)
    client = captured.app()

    # WHEN a request and a large batch are answered (the batch in a worker thread)
    client.post("/models/iris/predict", json=IRIS_RECORD)
    client.post("/models/iris/predict", json={"records": [IRIS_RECORD] * 45})

    # THEN neither request serialised its capture: the writer (here, this test's flush) does
    assert serialising_threads == []
    threading.current_thread().name = "the-writer"
    try:
        assert client.app.state.capture.flush() == 46  # type: ignore[attr-defined]
    finally:
        threading.current_thread().name = "MainThread"
    assert serialising_threads == ["the-writer", "the-writer"]


def test_the_contracts_rate_applies_unless_the_server_sets_one(captured: Captured) -> None:
    # GIVEN iris's contract captures everything, house-prices' nothing
    client = captured.app()
    for _ in range(20):
        assert client.post("/models/house-prices/predict", json=HOUSE_RECORD).status_code == 200
    client.post("/models/iris/predict", json=IRIS_RECORD)
    client.app.state.capture.flush()  # type: ignore[attr-defined]
    assert {line["model"] for line in captured.lines()} == {"iris"}

    # WHEN the server's own rate is 0
    off = captured.app(capture_rate=0.0)
    off.post("/models/iris/predict", json=IRIS_RECORD)

    # THEN nothing at all is captured, whatever the contract says
    assert off.app.state.capture.enabled is False  # type: ignore[attr-defined]
    assert off.app.state.capture.flush() == 0  # type: ignore[attr-defined]


def test_the_servers_rate_overrides_the_contracts(captured: Captured) -> None:
    client = captured.app(capture_rate=1.0)

    for _ in range(5):
        assert client.post("/models/house-prices/predict", json=HOUSE_RECORD).status_code == 200

    assert client.app.state.capture.flush() == 5  # type: ignore[attr-defined]
    inputs = [record for line in captured.lines() for record in line["inputs"]]
    assert len(inputs) == 5 and {record["district"] for record in inputs} == {"north"}
    assert all(record["heating"] is None for record in inputs)
    assert all("probabilities" not in line and "classes" not in line for line in captured.lines())


def test_without_a_bucket_nothing_is_captured(captured: Captured) -> None:
    client = captured.app(capture_bucket=None)
    client.post("/models/iris/predict", json=IRIS_RECORD)
    assert client.app.state.capture.enabled is False  # type: ignore[attr-defined]
    assert client.app.state.capture.flush() == 0  # type: ignore[attr-defined]


def test_a_full_queue_drops_samples_and_counts_them_without_failing_a_request(captured: Captured) -> None:
    # GIVEN room for three and a half single-record requests, as estimated until serialised (the body,
    # the generated request id, the answers)
    one = capture_module.estimated_size(len(json.dumps(IRIS_RECORD)) + len("0123456789ab-1"), 1, 3)
    client = captured.app(capture_max_queued_bytes=3 * one + one // 2)

    # WHEN five single-record requests are sampled before any write
    statuses = [client.post("/models/iris/predict", json=IRIS_RECORD).status_code for _ in range(5)]

    # THEN every request was answered, three records wait and two were dropped and counted
    assert statuses == [200] * 5
    assert _metric(client, "arrival_capture_records_total", model="iris", outcome="dropped") == 2
    assert 0 < _metric(client, "arrival_capture_queued_bytes") <= 3 * one + one // 2
    assert client.app.state.capture.flush() == 3  # type: ignore[attr-defined]
    # AND once written, there is room again
    assert _metric(client, "arrival_capture_queued_bytes") == 0
    assert client.post("/models/iris/predict", json=IRIS_RECORD).status_code == 200
    assert client.app.state.capture.flush() == 1  # type: ignore[attr-defined]


def test_the_queue_is_bounded_in_bytes_not_records(captured: Captured) -> None:
    # GIVEN room for 64 kB of captures
    client = captured.app(capture_max_queued_bytes=64_000)

    # WHEN one request of 40 records with a 60 kB request id is sampled, then one small request
    long_id = {"x-request-id": "r" * 60_000}
    batch = client.post("/models/iris/predict", json={"records": [IRIS_RECORD] * 40}, headers=long_id)
    single = client.post("/models/iris/predict", json=IRIS_RECORD)

    # THEN both were answered; the big one, 40 records, did not fit and was dropped and counted
    assert batch.status_code == single.status_code == 200
    assert _metric(client, "arrival_capture_records_total", model="iris", outcome="dropped") == 40
    assert client.app.state.capture.flush() == 1  # type: ignore[attr-defined]


def test_a_write_s3_refuses_is_counted_as_lost_and_never_raised(captured: Captured) -> None:
    captured.s3.delete_bucket(Bucket=CAPTURE_BUCKET)
    client = captured.app()

    assert client.post("/models/iris/predict", json=IRIS_RECORD).status_code == 200
    assert client.app.state.capture.flush() == 0  # type: ignore[attr-defined]

    assert _metric(client, "arrival_capture_records_total", model="iris", outcome="lost") == 1


def test_the_servers_thread_writes_on_its_own_and_the_rest_at_shutdown(captured: Captured) -> None:
    # GIVEN the server's lifespan (its writer thread runs), flushing every 2 records or 0.2 s
    settings = ServingSettings(
        models_bucket=MODELS_BUCKET,
        capture_bucket=CAPTURE_BUCKET,
        capture_batch_records=2,
        capture_flush_seconds=0.2,
        poll_seconds=60,
    )
    store = ModelStore(MODELS_BUCKET, max_batch=50)
    with TestClient(create_app(settings, store=store, api_key=None)) as client:
        store.refresh()
        assert any(thread.name == "capture-writer" for thread in threading.enumerate())
        # WHEN requests are sampled, THEN the thread writes them without being asked
        for _ in range(2):
            client.post("/models/iris/predict", json=IRIS_RECORD)
        eventually(lambda: len(captured.lines()) == 2, 10, interval=0.05, what="the thread's write")
        # AND a last request is still waiting when the server shuts down
        capture: CaptureWriter = client.app.state.capture  # type: ignore[attr-defined]
        capture.flush_seconds = 3600
        capture._wake.set()  # the thread wakes once, then sleeps for an hour
        client.post("/models/iris/predict", json=IRIS_RECORD, headers={"x-request-id": "last"})

    # THEN the shutdown wrote it, and the thread is gone
    assert [line["request_id"] for line in captured.lines()].count("last") == 1
    assert not any(thread.name == "capture-writer" for thread in threading.enumerate())


def test_offer_is_a_no_op_when_capture_is_off() -> None:
    writer = CaptureWriter(
        None, rate=None, batch_records=1, flush_seconds=1, max_queued_bytes=1, registry=CollectorRegistry()
    )
    writer.offer(None, [IRIS_RECORD], None, None, 1)  # type: ignore[arg-type]  # not even looked at
    writer.start()
    assert writer._thread is None
    assert writer.flush() == 0


@pytest.fixture
def lambda_deployed(captured: Captured, monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    monkeypatch.setenv("ARRIVAL_SERVING_MODELS_BUCKET", MODELS_BUCKET)
    monkeypatch.setenv("ARRIVAL_SERVING_CAPTURE_BUCKET", CAPTURE_BUCKET)
    lambda_handler.asgi_handler.cache_clear()
    yield captured
    lambda_handler.asgi_handler.cache_clear()


def test_a_lambda_invocation_writes_what_it_sampled_before_it_returns(
    lambda_deployed: Captured, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN the API Gateway sample event for iris, whose contract captures everything
    event = load_event("serving_apigw_predict")
    threads_before = {thread.name for thread in threading.enumerate()}

    # WHEN the function answers it
    response = lambda_handler.handler(event, lambda_context)

    # THEN the capture is in S3 as the invocation returns: no thread was left to write it later
    assert response["statusCode"] == 200
    (line,) = lambda_deployed.lines()
    assert line["predictions"] == [json.loads(response["body"])["prediction"]]
    assert "capture-writer" not in {thread.name for thread in threading.enumerate()} - threads_before
    # AND an invocation that samples nothing writes nothing
    lambda_handler.handler({**event, "path": "/health", "httpMethod": "GET", "body": None}, lambda_context)
    assert len(lambda_deployed.keys()) == 1
