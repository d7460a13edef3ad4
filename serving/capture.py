"""Data capture: a sample of the requests serving answers, with their predictions, written to S3 as
gzip JSON Lines for the scheduled drift report (common/monitoring.py), as SageMaker's data capture does.

A sampled request turns its records and predictions into JSON lines (orjson, about 2 µs a record)
and appends those bytes to an in-memory queue; no I/O happens on the request path. Bytes, not the
request's own objects: bytes are never walked by the garbage collector, where queued dicts would
survive into its older generations and be walked by each full collection until written. A
background thread drains the queue every `flush_seconds`, or as
soon as `batch_records` wait, and writes one object per model and hour:
``s3://<capture bucket>/<model>/capture/<yyyy>/<mm>/<dd>/<hh>/<uuid>.jsonl.gz``, a line per record.
The queue is bounded: when the writer falls behind, samples are dropped and counted in /metrics,
never waited for. In Lambda the process is frozen between invocations, so there is no thread: the
function writes what an invocation sampled before it returns (serving/lambda_handler.py).
"""

from __future__ import annotations

import gzip
import itertools
import logging
import random
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import Request

from common.adapters import s3
from common.bundle_loader import Predictions
from common.layout import capture_hour_prefix
from serving.bundle import LoadedModel

LOG = logging.getLogger("arrival.serving.capture")

# One sampled request in the queue: when, which model, how many records, their JSON lines. A plain
# tuple of atoms, which the garbage collector stops tracking.
Captured = tuple[float, str, int, bytes]


def capture_lines(
    model: LoadedModel,
    records: Sequence[dict[str, Any]],
    predictions: Predictions,
    request_id: str,
    captured_at: float,
) -> bytes:
    """A line per record: time, model, version, request id, input, prediction (and probabilities)."""
    moment = datetime.fromtimestamp(captured_at, UTC)  # orjson writes it in ISO 8601
    values = predictions.values.tolist()
    probabilities: Any = predictions.probabilities
    class_names = model.class_names
    rows = repeat(None) if probabilities is None or class_names is None else probabilities.tolist()
    lines = []
    for record, value, row in zip(records, values, rows, strict=False):
        line: dict[str, Any] = {
            "time": moment,
            "model": model.name,
            "version": model.version,
            "request_id": request_id,
            "input": record,
            "prediction": value,
        }
        if row is not None and class_names is not None:
            line["probabilities"] = dict(zip(class_names, row, strict=True))
        lines.append(orjson.dumps(line))
    return b"\n".join(lines)


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "arrival_capture_records",
            "Captured records: written to S3, dropped (the queue was full) or lost (S3 refused the write)",
            ["model", "outcome"],
            registry=registry,
        )
        self.queued = Gauge(
            "arrival_capture_queued_records", "Captured records waiting to be written", registry=registry
        )
        self.objects = Counter(
            "arrival_capture_objects", "Capture objects written to S3", ["model"], registry=registry
        )


class CaptureWriter:
    """`rate` None: each model's contract says (monitoring.sample_rate); a number: every model at
    that rate, 0 turning capture off. Without a bucket nothing is captured."""

    def __init__(
        self,
        bucket: str | None,
        *,
        rate: float | None,
        batch_records: int,
        flush_seconds: float,
        max_queued_records: int,
        registry: CollectorRegistry,
    ) -> None:
        self.bucket = bucket or ""
        self.rate = rate
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.max_queued_records = max_queued_records
        self.metrics = CaptureMetrics(registry)
        self._pending: deque[Captured] = deque()
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._queued = 0  # records in _pending, under _lock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: the thread, stop() or Lambda's flush
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.enabled = bool(bucket) and rate != 0

    def rate_for(self, model: LoadedModel) -> float:
        return model.manifest.contract.monitoring.sample_rate if self.rate is None else self.rate

    def offer(
        self,
        model: LoadedModel,
        records: Sequence[dict[str, Any]],
        predictions: Predictions,
        request: Request,
    ) -> None:
        """On the request path: a coin toss, and for a sampled request an append. Never blocks on I/O
        and never raises into the request. The request is read (its X-Request-Id) only if sampled."""
        if not self.enabled:
            return
        rate = self.rate_for(model)
        if rate <= 0 or (rate < 1 and random.random() >= rate):  # noqa: S311  # sampling, not crypto
            return
        count = len(records)
        with self._lock:
            queued = self._queued + count
            if queued <= self.max_queued_records:
                self._queued = queued
        if queued > self.max_queued_records:
            self.metrics.records.labels(model.name, "dropped").inc(count)
            return
        self.metrics.queued.set(queued)
        # The client's id, or one of this process's: unique without uuid4's cost on the request path.
        request_id = request.headers.get("x-request-id") or f"{self._id_prefix}-{next(self._ids)}"
        now = time.time()
        try:
            lines = capture_lines(model, records, predictions, request_id, now)
        except Exception:  # a value orjson refuses: this sample is lost, the request is not
            with self._lock:
                self._queued -= count
            self.metrics.records.labels(model.name, "lost").inc(count)
            LOG.exception("capture failed to serialize: model=%s", model.name)
            return
        self._pending.append((now, model.name, count, lines))
        if queued >= self.batch_records:
            self._wake.set()

    def start(self) -> None:
        """The EC2 server's writer thread; stop() writes what is left and ends it."""
        if not self.enabled or self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the thread must outlive any one failure; flush counts what it lost
                LOG.exception("capture flush failed")

    def flush(self) -> int:
        """Write every sample queued now; returns the records written. Samples S3 refuses are
        counted as lost and logged, not retried: capture is a sample, and must not pile up."""
        with self._flush_lock:
            taken: list[Captured] = []
            while self._pending:
                taken.append(self._pending.popleft())
            if not taken:
                return 0
            with self._lock:
                self._queued -= sum(count for _, _, count, _ in taken)
                self.metrics.queued.set(self._queued)
            groups: dict[tuple[str, str], list[Captured]] = defaultdict(list)
            for captured in taken:
                captured_at, model = captured[0], captured[1]
                hour = capture_hour_prefix(model, datetime.fromtimestamp(captured_at, UTC))
                groups[(model, hour)].append(captured)
            return sum(self._write(model, prefix, group) for (model, prefix), group in groups.items())

    def _write(self, model: str, prefix: str, group: list[Captured]) -> int:
        count = sum(captured[2] for captured in group)
        key = f"{prefix}{uuid.uuid4().hex}.jsonl.gz"
        try:
            # Level 1: a quarter of level 6's CPU (4 against 19 µs a record, benchmarks/capture.py's
            # records) for a quarter more bytes; zlib lets go of the GIL while it compresses.
            lines = b"\n".join(captured[3] for captured in group)
            body = gzip.compress(lines + b"\n", compresslevel=1, mtime=0)
            s3.put_bytes(self.bucket, key, body, "application/gzip")
        except Exception:  # S3 refused: counted, logged, never raised
            self.metrics.records.labels(model, "lost").inc(count)
            LOG.exception("capture write failed: s3://%s/%s (%d records lost)", self.bucket, key, count)
            return 0
        self.metrics.records.labels(model, "written").inc(count)
        self.metrics.objects.labels(model).inc()
        return count
