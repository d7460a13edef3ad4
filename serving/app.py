"""The serving API: every model's champion, its predictions, its metadata, health and metrics.

The predict path is kept lean on purpose: it reads the raw body, validates it with the model's own
schema straight from the bytes, runs ONNX and returns JSON it serialized itself, skipping FastAPI's
body parsing and response models. A small request is answered inline on the event loop (tens of
microseconds, not worth a thread hop; requests that arrive together share the run, see
serving/shared_runs.py); a large one in a worker thread, within a time budget (serving/offload.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from common.bundle_loader import Predictions
from serving import swagger
from serving.auth import API_KEY_HEADER, FORBIDDEN, ApiKeyCheck, ApiKeyRequired
from serving.bundle import LoadedModel
from serving.capture import CaptureWriter
from serving.mlflow_format import invocation_records
from serving.offload import Budget, Offloaded
from serving.openapi import ModelPaths
from serving.reload_signal import ReloadSignal
from serving.schemas import MAX_PROBLEMS, Decoded, Problem, Record, RequestError
from serving.settings import ServingSettings, get_serving_settings
from serving.shared_runs import SharedRuns
from serving.shutdown import CAPTURE_SHUTDOWN_SECONDS, STORE_THREAD_JOIN_SECONDS
from serving.store import ModelStore, PendingVersion
from serving.swagger import swagger_page

LOG = logging.getLogger("arrival.serving")
JSON = "application/json"
# Requests for a model that does not exist share one label, so callers cannot grow the metrics.
UNKNOWN_MODEL = "_unknown"
# Refused for their key: counted under one label too, whatever model they name.
UNAUTHENTICATED = "_unauthenticated"
# Names the worker process that answered /models/<model> (an instance runs one per core).
WORKER_HEADER = "X-Arrival-Worker"
# How long a starting EC2 server waits for its first load of the models before it answers anyway.
FIRST_LOAD_SECONDS = 30.0
# A worker (serving/offload.py) runs a batch of PARALLEL_ROWS rows or more in parts, two at a time,
# each of at most PART_ROWS rows (about 20 ms for a 100-tree forest).
PARALLEL_ROWS = 500
PART_ROWS = 2000


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "arrival_requests", "Prediction requests", ["model", "route", "status"], registry=registry
        )
        self.seconds = Histogram(
            "arrival_request_seconds",
            "Time to answer a prediction request, in the application",
            ["model", "route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.errors = Counter(
            "arrival_request_errors",
            "Refused or failed requests, by rule",
            ["model", "route", "rule"],
            registry=registry,
        )
        # The labelled children of the hot path, kept to skip the label lookups on every request.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, model: str, route: str, status: int, seconds: float, rules: Iterable[str]) -> None:
        children = self._children.get((model, route, status))
        if children is None:
            children = (self.requests.labels(model, route, str(status)), self.seconds.labels(model, route))
            self._children[(model, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        for rule in rules:
            self.errors.labels(model, route, rule).inc()


def current_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    check_seconds: float | None = request.app.state.check_pointers_every
    if check_seconds is not None:
        # Lambda has no background threads: the request itself looks at the pointers now and then,
        # and loads the model it names the first time one asks for it.
        store.refresh_if_older_than(check_seconds)
        if (name := request.path_params.get("model")) is not None:
            store.load_when_asked([name])
    return store


async def store_dependency(request: Request) -> ModelStore:
    # async, so FastAPI calls it inline rather than in its thread pool
    return current_store(request)


StoreDep = Annotated[ModelStore, Depends(store_dependency)]


def problems_json(problems: list[Problem], **extra: Any) -> bytes:
    details = [{"field": p.field, "rule": p.rule, "message": p.message} for p in problems]
    return orjson.dumps({"detail": details, **extra})


def unknown_model_response(name: str, store: ModelStore) -> Response:
    """404 for a name that has no pointer; 503 while it may have one that is not loaded yet (the
    server is starting, or the model's only bundle cannot be loaded): a client that retries, or a
    load balancer that reads /ready, is then right to wait rather than to give up."""
    missing = store.readiness().missing
    if why := missing.get(name) or missing.get("pointers"):
        message = f"model {name!r} is not loaded yet: {why}"
        pending = store.pending(name)
        content = problems_json(
            [Problem("model", "not_loaded", message)],
            known_models=sorted(store.models),
            pending=pending.model_dump(mode="json") if pending else None,
        )
        return Response(content, status_code=503, media_type=JSON, headers={"Retry-After": "1"})
    known = sorted(store.models)
    message = f"no model named {name!r}; known models: {', '.join(known) or 'none yet'}"
    content = problems_json([Problem("model", "unknown_model", message)], known_models=known)
    return Response(content, status_code=404, media_type=JSON)


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused early: a wrong content type, or more bytes than allowed (declared or sent)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != JSON:
        message = f"expected {JSON}, got {content_type or 'no content type'!r}"
        raise RequestError(415, [Problem("content-type", "unsupported_media_type", message)])
    too_large = RequestError(413, [Problem("body", "body_too_large", f"the body is over {max_bytes} bytes")])
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        if int(declared) > max_bytes:
            raise too_large
        # The HTTP server holds a body to its declared length, so it can be read at once.
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked: counted while it arrives
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _json_values(values: np.ndarray) -> Any:
    # orjson writes a numeric array itself (float32 with its own shortest digits); labels are objects.
    return values.tolist() if values.dtype == object else values


def _dumps(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def read_predict(model: LoadedModel, body: bytes) -> Decoded:
    return model.schemas.decode_predict_body(body)


def read_predict_in_parts(model: LoadedModel, body: bytes) -> Decoded:
    return model.schemas.decode_predict_body_in_parts(body)


def write_predict(model: LoadedModel, predictions: Predictions, batch: bool) -> bytes:
    values, probabilities = _json_values(predictions.values), predictions.probabilities
    document: dict[str, Any] = {"model": model.name, "version": model.version}
    if batch:
        document["predictions"] = values
        if probabilities is not None and model.class_names is not None:
            names = model.class_names
            document["probabilities"] = [dict(zip(names, row, strict=True)) for row in probabilities.tolist()]
    else:
        document["prediction"] = values[0]
        if probabilities is not None and model.class_names is not None:
            document["probabilities"] = dict(zip(model.class_names, probabilities[0].tolist(), strict=True))
    return _dumps(document)


def read_invocations(model: LoadedModel, body: bytes) -> Decoded:
    return invocation_records(body, model.schemas)


def write_invocations(model: LoadedModel, predictions: Predictions, batch: bool) -> bytes:
    return _dumps({"predictions": _json_values(predictions.values)})


def refuse_non_finite(predictions: Predictions, decoded: Decoded) -> None:
    """A 422 naming each record whose answer is not a finite number: values within float32's range
    can still take a model's arithmetic past it (a linear model's sum), and JSON would say null."""
    numbers = [array for array in (predictions.values, predictions.probabilities) if array is not None]
    finite = [np.isfinite(array) for array in numbers if array.dtype.kind == "f"]
    if all(map(np.all, finite)):
        return
    rows = len(decoded.records)
    bad = np.logical_or.reduce([~flags.reshape(rows, -1).all(axis=1) for flags in finite])
    message = (
        "the model's answer for this record is not a finite number: its values take the model's "
        "float32 arithmetic past its range"
    )
    problems = [
        Problem(decoded.field_of(int(index)), "non_finite_prediction", message)
        for index in np.flatnonzero(bad)[:MAX_PROBLEMS]
    ]
    raise RequestError(422, problems)


def answer_predict(model: LoadedModel, body: bytes) -> bytes:
    """One predict body's answer, with an ONNX run of its own (the app shares runs between requests)."""
    decoded = read_predict(model, body)
    predictions = model.predict(decoded.records)
    refuse_non_finite(predictions, decoded)
    return write_predict(model, predictions, decoded.batch)


Reader = Callable[[LoadedModel, bytes], Decoded]
Writer = Callable[[LoadedModel, Predictions, bool], bytes]


@dataclass(frozen=True)
class Codec:
    """A route's body format: `read` on the loop, `read_in_parts` in a worker (validating a large body
    in parts, so that the loop takes the interpreter lock back between them), `write` for the answer."""

    read: Reader
    read_in_parts: Reader
    write: Writer


def _answer_in_worker(
    model: LoadedModel,
    body: bytes,
    codec: Codec,
    request: Request,
    capture: CaptureWriter,
    helpers: Executor,
    budget: Budget,
) -> bytes:
    """A large request's whole answer, in a worker thread (serving/offload.py), checking its budget
    between steps; captured only if the client gets it."""
    budget.check()  # waited its whole budget for a thread: never starts
    decoded = codec.read_in_parts(model, body)
    budget.check()
    predictions = _predict_in_parts(model, decoded.records, budget, helpers)
    refuse_non_finite(predictions, decoded)
    content = codec.write(model, predictions, decoded.batch)
    if budget.claim():
        capture.offer(model, decoded.records, predictions, request, len(body))
    return content


def _predict_in_parts(
    model: LoadedModel, records: list[Record], budget: Budget, helpers: Executor
) -> Predictions:
    """A large batch's ONNX runs, in parts of at most PART_ROWS rows, every other part run by a helper
    thread beside the worker: a run lets go of the interpreter lock, so two parts run on two cores (a
    100-tree forest's 1,000 rows: 10.3 ms in one run, 5.7 ms in two halves side by side, on a core
    left free). Between its parts the worker checks the budget, and the event loop takes the lock back
    (building a run's tensors holds it)."""
    if len(records) < PARALLEL_ROWS:
        return model.predict(records)
    size = min(PART_ROWS, -(-len(records) // 2))
    parts = [records[start : start + size] for start in range(0, len(records), size)]
    beside = {index: helpers.submit(model.predict, parts[index]) for index in range(1, len(parts), 2)}
    results: dict[int, Predictions] = {}
    try:
        for index in range(0, len(parts), 2):
            budget.check()
            results[index] = model.predict(parts[index])
        results.update((index, future.result()) for index, future in beside.items())
    finally:
        for future in beside.values():  # over budget, or failed: what has not started never will
            future.cancel()
    ordered = [results[index] for index in range(len(parts))]
    probabilities = [part.probabilities for part in ordered if part.probabilities is not None]
    return Predictions(
        np.concatenate([part.values for part in ordered]),
        np.concatenate(probabilities) if probabilities else None,
    )


async def _answer_on_loop(model: LoadedModel, body: bytes, codec: Codec, request: Request) -> bytes:
    state = request.app.state
    decoded = codec.read(model, body)
    predictions = await state.shared_runs.predict(model, decoded.records)
    refuse_non_finite(predictions, decoded)
    content = codec.write(model, predictions, decoded.batch)
    state.capture.offer(model, decoded.records, predictions, request, len(body))
    return content


# /invocations' records are validated in parts by RequestSchemas.validate_records itself.
# Validating a request on the loop costs about this per feature value (1.46 ms for 1,000 records of 20
# features, msgspec's decoding and the records' dicts; benchmarks/results/serving_batches.md), whatever
# the model.
VALIDATE_SECONDS_PER_VALUE = 0.075e-6


def estimated_seconds(model: LoadedModel, body_bytes: int) -> float:
    """A body's answer, priced before it is read: its records (by the size of one, measured at load)
    times validation and the model's own inference per row. A thread hop costs a batch 0.1 to 0.3 ms,
    so a cheap model's batch (a linear model's 1,000 records: about 2 ms) stays on the loop, and a forest's
    goes to a worker, where its parts run on two cores. Unmeasured: priced as too long to hold the loop."""
    cost = model.row_cost
    if cost is None:
        return float("inf")
    rows = body_bytes / cost.request_bytes
    return rows * (
        VALIDATE_SECONDS_PER_VALUE * len(model.manifest.contract.features) + cost.inference_seconds
    )


PREDICT = Codec(read_predict, read_predict_in_parts, write_predict)
INVOCATIONS = Codec(read_invocations, read_invocations, write_invocations)


async def _answer(request: Request, route: str, codec: Codec) -> Response:
    started = time.perf_counter()
    state = request.app.state
    request_metrics: RequestMetrics = state.request_metrics
    # First: a refused request reads no body, runs no model and is never captured.
    refusal = state.api_key_check.refusal(request.headers.get(API_KEY_HEADER))
    if refusal is not None:
        request_metrics.observe(UNAUTHENTICATED, route, 403, time.perf_counter() - started, [refusal.rule])
        return Response(problems_json([refusal]), status_code=403, media_type=JSON)
    store = current_store(request)
    name: str = request.path_params["model"]
    model = store.models.get(name)  # one read of the snapshot: the whole request sees this version
    if model is None:
        response = unknown_model_response(name, store)
        rule = "unknown_model" if response.status_code == 404 else "not_loaded"
        request_metrics.observe(
            UNKNOWN_MODEL, route, response.status_code, time.perf_counter() - started, [rule]
        )
        return response
    rules: Iterable[str] = ()
    headers = {"X-Model-Version": model.version}
    settings: ServingSettings = state.settings
    try:
        body = await read_json_body(request, settings.max_body_bytes)
        if len(body) > settings.offload_body_bytes and (
            estimated_seconds(model, len(body)) > settings.offload_above_seconds
        ):
            offloaded: Offloaded = state.offloaded
            job = partial(_answer_in_worker, model, body, codec, request, state.capture, offloaded.helpers)
            content = await offloaded.answer(job, started)
        else:
            content = await _answer_on_loop(model, body, codec, request)
        status = 200
    except RequestError as error:
        rules = sorted({problem.rule for problem in error.problems})
        content, status = problems_json(error.problems), error.status
        if status == 503:  # over its time budget: the server is busy, not the request wrong
            headers["Retry-After"] = "1"
    except Exception:  # a bug or a broken model, never a client's mistake: logged, counted, a JSON 500
        LOG.exception("prediction failed: model=%s version=%s route=%s", name, model.version, route)
        rules = ["internal_error"]
        message = "the model failed to answer; the error is logged"
        content, status = problems_json([Problem("model", "internal_error", message)]), 500
    elapsed = time.perf_counter() - started
    request_metrics.observe(name, route, status, elapsed, rules)
    headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
    return Response(content, status_code=status, media_type=JSON, headers=headers)


class ModelLineage(BaseModel):
    run_id: str
    sources: list[str]
    content_hashes: list[str]
    contract_hash: str
    dvc_lock: str
    recipe: str = Field(description='the recipe the contract named, or "built-in"')
    recipe_hash: str = Field(description='its SHA-256, or "built-in"')


class ModelDescription(BaseModel):
    name: str
    version: str
    task: str
    promoted_at: str
    promotion_reason: str
    metrics: dict[str, float]
    lineage: ModelLineage
    request_schema: dict[str, Any]
    # The model's newest pointer when it does not answer (this version keeps answering): why, and when
    # the server tries it again. None when the version above is the pointer's.
    pending: PendingVersion | None = None


def describe(model: LoadedModel, pending: PendingVersion | None = None) -> ModelDescription:
    lineage = model.manifest.lineage
    return ModelDescription(
        name=model.name,
        version=model.version,
        task=model.manifest.contract.task.value,
        promoted_at=model.pointer.promoted_at,
        promotion_reason=model.pointer.reason,
        metrics=model.manifest.metrics,
        lineage=ModelLineage(
            run_id=lineage.run_id,
            sources=lineage.sources,
            content_hashes=lineage.content_hashes,
            contract_hash=lineage.contract_hash,
            dvc_lock=lineage.dvc_lock,
            recipe=lineage.recipe,
            recipe_hash=lineage.recipe_hash,
        ),
        request_schema=model.schemas.record_json_schema,
        pending=pending,
    )


async def predict(request: Request) -> Response:
    return await _answer(request, "predict", PREDICT)


async def invocations(request: Request) -> Response:
    return await _answer(request, "invocations", INVOCATIONS)


models_router = APIRouter(
    prefix="/models", tags=["models"], dependencies=[ApiKeyRequired], responses=FORBIDDEN
)


@models_router.get("")
async def list_models(store: StoreDep) -> list[ModelDescription]:
    """Every model being served: version, metrics, promotion, lineage and request schema."""
    store.load_when_asked(store.listed)  # on Lambda, the models this instance has not loaded yet
    return [describe(model, store.pending(name)) for name, model in sorted(store.models.items())]


# serving/openapi.py adds the Problems schema to every document it serves.
PROBLEMS_JSON = {JSON: {"schema": {"$ref": "#/components/schemas/Problems"}}}


@models_router.get(
    "/{model}",
    response_model=ModelDescription,
    responses={
        404: {"description": "No such model (the known ones are listed)", "content": PROBLEMS_JSON},
        503: {
            "description": "The model is not loaded yet (the server is starting)",
            "content": PROBLEMS_JSON,
        },
    },
)
async def get_model(model: str, store: StoreDep, response: Response) -> Response | ModelDescription:
    """One model's version, metrics, promotion time, lineage and request schema, and its newest pointer
    when that does not answer (`pending`: why, and when it is tried again). The `X-Arrival-Worker`
    header names the worker process (its pid) that answered."""
    loaded = store.models.get(model)
    if loaded is None:
        refused = unknown_model_response(model, store)
        refused.headers[WORKER_HEADER] = str(os.getpid())
        return refused
    response.headers[WORKER_HEADER] = str(os.getpid())
    return describe(loaded, store.pending(model))


operations_router = APIRouter(tags=["operations"])


@operations_router.get("/health")
async def health(request: Request) -> dict[str, str | int]:
    """Liveness: 200 while the process runs, with the release it runs (an instance's boot sets it) and
    the worker process that answered (`worker`, its pid: an instance runs one per core)."""
    settings: ServingSettings = request.app.state.settings
    return {"status": "ok", "release": settings.release_version or "unknown", "worker": os.getpid()}


@operations_router.get(
    "/ready",
    responses={503: {"description": "The pointers were never listed, or no model could be loaded"}},
)
async def ready(store: StoreDep) -> Response:
    """200 unless the server has never listed the pointers, or every model's first load failed: one
    model's trouble is every instance's (they read the same bucket), so it never makes one unready.
    The body says each model's state: `models` (the versions answering), `missing` (a pointer, no
    version answering, and why), `stale` (an older version answering, and why the newest does not),
    `unloaded` (on Lambda: loaded when first asked for), and `listing` (the last listing's failure,
    while the one before keeps answering)."""
    readiness = store.readiness()
    versions = {name: model.version for name, model in sorted(store.models.items())}
    document = {
        "ready": readiness.ready,
        "reason": readiness.reason,
        "models": versions,
        "missing": readiness.missing,
        "stale": readiness.stale,
        "unloaded": readiness.unloaded,
        "listing": readiness.listing,
    }
    return Response(orjson.dumps(document), status_code=200 if readiness.ready else 503, media_type=JSON)


# Prometheus' text format, not JSON: documented so, or a client generated from the schema parses JSON.
@operations_router.get(
    "/metrics", response_class=PlainTextResponse, dependencies=[ApiKeyRequired], responses=FORBIDDEN
)
async def metrics(store: StoreDep) -> Response:
    """Prometheus metrics: requests, latency, refusals by rule, loaded versions and reloads."""
    return Response(generate_latest(store.registry), media_type=CONTENT_TYPE_LATEST)


# FastAPI's own /openapi.json and /docs would come before the prediction routes (see create_app).
docs_router = APIRouter(include_in_schema=False, dependencies=[ApiKeyRequired])


@docs_router.get("/openapi.json")
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return swagger_page(request.app.title)


@docs_router.get("/docs/{name}")
async def swagger_asset(name: str) -> Response:
    """Swagger UI's script and stylesheet, from the installed package (serving/swagger.py)."""
    media_type = swagger.MEDIA_TYPES.get(name)
    if media_type is None:
        message = f"no such file; the page's are {', '.join(sorted(swagger.MEDIA_TYPES))}"
        return Response(
            problems_json([Problem("path", "not_found", message)]), status_code=404, media_type=JSON
        )
    # They change only with the installed package: a browser may keep them for a day.
    headers = {"Cache-Control": "public, max-age=86400"}
    return Response(swagger.asset(name), media_type=media_type, headers=headers)


def create_app(
    settings: ServingSettings | None = None,
    *,
    store: ModelStore | None = None,
    mode: Literal["server", "lambda"] = "server",
    api_key: str | None,
) -> FastAPI:
    """The API. "server" refreshes models from background threads started with the app's lifespan;
    "lambda" has no lifespan (Mangum runs with lifespan="off") and checks pointers on requests.
    The app's metrics go to the store's registry: one app per store.

    With an api_key, every route but /health and /ready (probes: a load balancer's health check
    sends no header) answers 403 without it in x-api-key. Without one the app checks nothing: that is
    the Lambda app, behind API Gateway's own check of the same key. No default, so that each caller
    says which it builds."""
    settings = settings or get_serving_settings()
    store = store or ModelStore(settings.models_bucket, max_batch=settings.max_batch, lazy=mode == "lambda")
    capture = CaptureWriter(
        settings.capture_bucket,
        rate=settings.capture_rate,
        batch_records=settings.capture_batch_records,
        flush_seconds=settings.capture_flush_seconds,
        max_queued_bytes=settings.capture_max_queued_bytes,
        registry=store.registry,
    )
    offloaded = Offloaded(settings.predict_threads, settings.request_budget_seconds)

    @asynccontextmanager
    async def refresh_in_background(_: FastAPI) -> AsyncIterator[None]:
        # Load every champion before uvicorn takes the first connection (it listens once the
        # lifespan has started): a server restarting for a new release would otherwise answer 503
        # "not loaded yet" to the requests waiting for it in the socket's backlog
        # (serving/listening.py). Not forever: with the bucket out of reach, it answers, and loads
        # on its poll.
        try:
            await asyncio.wait_for(asyncio.to_thread(store.refresh), FIRST_LOAD_SECONDS)
        except Exception:  # the server must start anyway; /ready says what is missing
            LOG.exception("the first load of the models failed: serving what loads later")
        signal_file = settings.reload_signal_file
        store.start_background(
            poll_seconds=settings.poll_seconds,
            reload_signal=ReloadSignal(Path(signal_file)) if signal_file else None,
        )
        capture.start()
        try:
            yield
        finally:
            # uvicorn has answered or dropped every request by now (serving/main.py). The captures
            # first, while the process has the most of its SIGTERM-to-SIGKILL window left; the
            # refreshers hold nothing worth waiting for.
            offloaded.shutdown()
            capture.stop(timeout=CAPTURE_SHUTDOWN_SECONDS)
            store.stop_background(timeout=STORE_THREAD_JOIN_SECONDS)

    app = FastAPI(
        title="arrival serving",
        description="Every model's champion, answered from its ONNX serving bundle.",
        lifespan=refresh_in_background if mode == "server" else None,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.request_metrics = RequestMetrics(store.registry)
    app.state.shared_runs = SharedRuns()
    app.state.capture = capture
    app.state.offloaded = offloaded
    app.state.check_pointers_every = settings.lambda_check_seconds if mode == "lambda" else None
    app.state.api_key_check = ApiKeyCheck(api_key)
    # The predictions, nearly all of the traffic, are plain Starlette routes on the app itself and
    # first in line (routes are tried in order): FastAPI's parameters, dependencies and routers would
    # cost more than the prediction. They stay out of the generated schema, where serving/openapi.py
    # documents a concrete /models/<name>/... path per model instead.
    app.add_route("/models/{model}/predict", predict, methods=["POST"], include_in_schema=False)
    app.add_route("/models/{model}/invocations", invocations, methods=["POST"], include_in_schema=False)
    for router in (models_router, operations_router, docs_router):
        app.include_router(router)
    app.openapi = ModelPaths(app.openapi, lambda: store.models)  # type: ignore[method-assign]
    return app
