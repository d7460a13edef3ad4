"""Data capture: a sample of the requests serving answers, with their predictions, written to S3 as
gzip JSON Lines for the scheduled drift report (common/monitoring.py), as SageMaker's data capture does.

On the request path, a sampled request costs a coin toss and an append: its validated records and its
predictions (objects the request made anyway) wait in an in-memory queue with an estimate of their size.
The writer thread turns what waits into JSON, a line per request, every `SERIALIZE_EVERY_SECONDS`, so
no serialisation runs on the event loop, and the records are not held long enough for the garbage
collector's older generations to keep walking them. It writes one object per model and hour every
`flush_seconds`, or as soon as `batch_records` wait:
``s3://<capture bucket>/<model>/capture/<yyyy>/<mm>/<dd>/<hh>/<uuid>.jsonl.gz``.

The queue is bounded in bytes (`max_queued_bytes`: the JSON's exact size once serialised, an estimate
from the request's body until then): when the writer falls behind, new samples are dropped and counted
in /metrics, never waited for. In Lambda the process is frozen between invocations, so there is no
thread: the function serialises and writes what an invocation sampled before it returns
(serving/lambda_handler.py).
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
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import Request

from common.adapters import s3
from common.bundle_loader import Predictions
from common.layout import capture_hour_prefix
from serving.bundle import LoadedModel

LOG = logging.getLogger("arrival.serving.capture")

# How long a sampled request waits, unserialised, for the writer thread.
SERIALIZE_EVERY_SECONDS = 0.2
# A record's prediction in JSON: its label or value, and a probability per class (a request's body
# holds its records' inputs already): only for the estimate the queue is bounded by until serialised.
_ANSWER_BYTES, _PROBABILITY_BYTES = 16, 12


class _Sampled:
    """One sampled request, waiting for the writer thread to serialise it."""

    __slots__ = ("at", "model", "predictions", "records", "request_id", "size")

    def __init__(
        self,
        at: float,
        model: LoadedModel,
        records: Sequence[dict[str, Any]],
        predictions: Predictions,
        request_id: str,
        size: int,
    ) -> None:
        self.at, self.model, self.records, self.predictions = at, model, records, predictions
        self.request_id, self.size = request_id, size


# One serialised request: when, which model, how many records, its JSON line. A plain tuple of
# atoms, which the garbage collector stops tracking.
Serialized = tuple[float, str, int, bytes]


def capture_line(
    model: LoadedModel,
    records: Sequence[dict[str, Any]],
    predictions: Predictions,
    request_id: str,
    captured_at: float,
) -> bytes:
    """One line per request: time, model, version and request id once, then its inputs and their
    predictions in order (and, for a classifier, the classes and a row of probabilities per record)."""
    values = predictions.values
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(captured_at, UTC),  # orjson writes it in ISO 8601
        "model": model.name,
        "version": model.version,
        "request_id": request_id,
        "inputs": records,
        "predictions": values.tolist() if values.dtype == object else values,  # labels are objects
    }
    if predictions.probabilities is not None and model.class_names is not None:
        line["classes"] = model.class_names
        line["probabilities"] = predictions.probabilities
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY)


def estimated_size(body_bytes: int, records: int, classes: int) -> int:
    """The bytes a sampled request will take once serialised: its inputs, about as long as its body,
    and its answers."""
    return body_bytes + records * (_ANSWER_BYTES + _PROBABILITY_BYTES * classes)


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
        self.queued_bytes = Gauge(
            "arrival_capture_queued_bytes",
            "Bytes of captured requests waiting to be written (estimated until serialised)",
            registry=registry,
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
        max_queued_bytes: int,
        registry: CollectorRegistry,
    ) -> None:
        self.bucket = bucket or ""
        self.rate = rate
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.max_queued_bytes = max_queued_bytes
        self.metrics = CaptureMetrics(registry)
        self._sampled: deque[_Sampled] = deque()  # appended on the request path
        self._serialized: deque[Serialized] = deque()  # by the writer only
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._queued_records = 0  # in both queues, under _lock
        self._queued_bytes = 0  # in both queues, under _lock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: the thread, stop() or Lambda's flush
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.enabled = bool(bucket) and rate != 0

    def rate_for(self, model: LoadedModel) -> float:
        return model.manifest.contract.monitoring.sample_rate if self.rate is None else self.rate

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def offer(
        self,
        model: LoadedModel,
        records: Sequence[dict[str, Any]],
        predictions: Predictions,
        request: Request,
        body_bytes: int,
    ) -> None:
        """On the request path: a coin toss, and for a sampled request an append. Never blocks on I/O,
        serialises nothing and never raises into the request. The request is read (its X-Request-Id)
        only if sampled."""
        if not self.enabled:
            return
        rate = self.rate_for(model)
        if rate <= 0 or (rate < 1 and random.random() >= rate):  # noqa: S311  # sampling, not crypto
            return
        count = len(records)
        # The client's id, or one of this process's: unique without uuid4's cost on the request path.
        request_id = request.headers.get("x-request-id") or f"{self._id_prefix}-{next(self._ids)}"
        size = estimated_size(body_bytes + len(request_id), count, len(model.class_names or ()))
        with self._lock:
            fits = self._queued_bytes + size <= self.max_queued_bytes
            if fits:
                self._queued_bytes += size
                self._queued_records += count
                queued_bytes, queued_records = self._queued_bytes, self._queued_records
        if not fits:
            self.metrics.records.labels(model.name, "dropped").inc(count)
            return
        self._sampled.append(_Sampled(time.time(), model, records, predictions, request_id, size))
        self.metrics.queued.set(queued_records)
        self.metrics.queued_bytes.set(queued_bytes)

    def start(self) -> None:
        """The EC2 server's writer thread; stop() writes what is left and ends it."""
        if not self.enabled or self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write everything queued, within `timeout` seconds: the thread's last round, or a flush here
        without a thread. Past the timeout (S3 hangs), what is left is logged, not waited for."""
        self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is None:
            self.flush()
            return
        thread.join(timeout)
        if thread.is_alive():
            LOG.error(
                "capture: %d records (%d bytes) not written within %.1f s of the shutdown",
                self._queued_records,
                self._queued_bytes,
                timeout,
            )

    def _run(self) -> None:
        last_write = time.monotonic()
        while True:
            stopping = self._stopping
            try:
                self._serialize_sampled()
                due = time.monotonic() - last_write >= self.flush_seconds
                if stopping or due or self._queued_records >= self.batch_records:
                    self.flush()
                    last_write = time.monotonic()
            except Exception:  # the thread must outlive any one failure; flush counts what it lost
                LOG.exception("capture flush failed")
            if stopping:
                return
            self._wake.wait(SERIALIZE_EVERY_SECONDS)
            self._wake.clear()

    def _serialize_sampled(self) -> None:
        """Turn the waiting requests into JSON lines, holding each one's exact size from then on."""
        while self._sampled:
            sampled = self._sampled.popleft()
            try:
                line = capture_line(
                    sampled.model, sampled.records, sampled.predictions, sampled.request_id, sampled.at
                )
            except Exception:  # a value orjson refuses: this sample is lost, never the others
                self._forget(len(sampled.records), sampled.size)
                self.metrics.records.labels(sampled.model.name, "lost").inc(len(sampled.records))
                LOG.exception("capture failed to serialize: model=%s", sampled.model.name)
                continue
            with self._lock:
                self._queued_bytes += len(line) - sampled.size
            self._serialized.append((sampled.at, sampled.model.name, len(sampled.records), line))

    def _forget(self, records: int, size: int) -> None:
        with self._lock:
            self._queued_records -= records
            self._queued_bytes -= size
            self.metrics.queued.set(self._queued_records)
            self.metrics.queued_bytes.set(self._queued_bytes)

    def flush(self) -> int:
        """Serialise and write every sample queued now; returns the records written. Samples S3
        refuses are counted as lost and logged, not retried: capture is a sample, and must not pile up."""
        with self._flush_lock:
            self._serialize_sampled()
            taken: list[Serialized] = []
            while self._serialized:
                taken.append(self._serialized.popleft())
            if not taken:
                return 0
            self._forget(sum(count for _, _, count, _ in taken), sum(len(line) for *_, line in taken))
            groups: dict[tuple[str, str], list[Serialized]] = defaultdict(list)
            for captured in taken:
                captured_at, model = captured[0], captured[1]
                hour = capture_hour_prefix(model, datetime.fromtimestamp(captured_at, UTC))
                groups[(model, hour)].append(captured)
            return sum(self._write(model, prefix, group) for (model, prefix), group in groups.items())

    def _write(self, model: str, prefix: str, group: list[Serialized]) -> int:
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
