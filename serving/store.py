"""The models serving answers with: one immutable snapshot `name -> LoadedModel`, replaced whole, so a
request reads one reference and always sees a consistent set of models.

A refresh lists the pointers once (keys and ETags), fetches only pointers whose ETag moved, loads and
checks a new version's bundle off the request path, then swaps the snapshot. A bundle that fails
keeps the previous version serving. On EC2 two threads call refresh: one on each reload-queue message
(a hint that a pointer moved), one every `poll_seconds` in case a hint is lost. In Lambda there are no
threads: a request refreshes first if the last look at the pointers is too old.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from common.adapters import s3, sqs
from common.bundle_loader import BundleMissingError, BundleRejectedError, fetch_bundle
from common.bundles import POINTERS_PREFIX, ServingPointer, model_of_pointer_key, pointer_key
from serving.bundle import LoadedModel

LOG = logging.getLogger("arrival.serving")
MAX_BACKOFF_SECONDS = 30.0


class ReloadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "arrival_model_reloads", "Bundles loaded and checked", ["model"], registry=registry
        )
        self.failures = Counter(
            "arrival_model_reload_failures",
            "Bundles that could not be loaded or were refused (the previous version kept serving)",
            ["model"],
            registry=registry,
        )
        self.version = Gauge(
            "arrival_model_version", "The version serving answers with", ["model"], registry=registry
        )


@dataclass(frozen=True)
class Readiness:
    ready: bool
    missing: dict[str, str] = field(default_factory=dict)  # model (or "pointers") -> why it is not served
    # Models whose newest pointer could not be loaded while an older version keeps answering: worth an
    # alert, but not a reason for a load balancer to pull every instance at once.
    stale: dict[str, str] = field(default_factory=dict)


class ModelStore:
    def __init__(self, bucket: str, *, max_batch: int, registry: CollectorRegistry | None = None) -> None:
        self.bucket = bucket
        self.max_batch = max_batch
        self.registry = registry or CollectorRegistry()
        self.metrics = ReloadMetrics(self.registry)
        self._models: Mapping[str, LoadedModel] = MappingProxyType({})
        self._retired: Mapping[str, LoadedModel] | None = None  # the snapshot the last swap replaced
        # Written only under _refresh_lock, and replaced rather than changed, so readers need no lock.
        self._handled_etags: dict[str, str] = {}  # pointer ETags loaded or refused: not fetched again
        self._problems: dict[str, str] = {}
        self._listing_problem: str | None = "the pointers have not been read yet"
        self._last_check: float | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """The current snapshot: read it once per request."""
        return self._models

    def readiness(self) -> Readiness:
        """Ready once every model with a pointer answers with some version."""
        models, problems = self._models, self._problems
        missing = {name: why for name, why in problems.items() if name not in models}
        stale = {name: why for name, why in problems.items() if name in models}
        if self._listing_problem:
            missing["pointers"] = self._listing_problem
        return Readiness(not missing, missing, stale)

    def refresh(self) -> None:
        """Bring the snapshot in line with the pointers. Raises only if the pointers cannot be listed."""
        with self._refresh_lock:
            self._last_check = time.monotonic()
            self._release_retired()
            try:
                listed = {
                    model: etag
                    for key, etag in s3.list_objects(self.bucket, POINTERS_PREFIX)
                    if (model := model_of_pointer_key(key))
                }
            except Exception as error:
                self._listing_problem = f"cannot list s3://{self.bucket}/{POINTERS_PREFIX}: {error}"
                raise
            self._apply(listed)
            self._listing_problem = None

    def refresh_if_older_than(self, seconds: float) -> None:
        """Lambda's check on the request path; a failure is logged and the loaded models keep answering."""
        last = self._last_check
        if last is not None and time.monotonic() - last < seconds:
            return
        try:
            self.refresh()
        except Exception:
            LOG.exception("pointer check failed: bucket=%s", self.bucket, extra={"bucket": self.bucket})

    def _apply(self, listed: dict[str, str]) -> None:
        models = {name: model for name, model in self._models.items() if name in listed}
        handled = {name: etag for name, etag in self._handled_etags.items() if name in listed}
        problems = {name: why for name, why in self._problems.items() if name in listed}
        for gone in set(self._models) - set(listed):
            self.metrics.version.remove(gone)
        for name, etag in sorted(listed.items()):
            if handled.get(name) == etag:
                continue
            outcome = self._load(name, models.get(name))
            if outcome.handled_etag:
                handled[name] = outcome.handled_etag
            if outcome.model is not None:
                models[name] = outcome.model
                problems.pop(name, None)
            else:
                problems[name] = outcome.problem
        self._handled_etags, self._problems = handled, problems
        if models.keys() != self._models.keys() or any(models[n] is not self._models[n] for n in models):
            self._retired, self._models = self._models, MappingProxyType(models)
            keep_out_of_collections()

    def _release_retired(self) -> None:
        """Drop the snapshot replaced at the previous refresh. The requests that held it ended long ago,
        so its ONNX sessions are freed here, off the request path, and their heap goes back to the OS."""
        if self._retired is not None:
            self._retired = None
            return_freed_memory()

    def _load(self, name: str, current: LoadedModel | None) -> _LoadOutcome:
        pointer: ServingPointer | None = None
        etag: str | None = None
        try:
            fetched = s3.get_bytes(self.bucket, pointer_key(name))
            if fetched is None:
                return _LoadOutcome(None, None, "the pointer vanished while being read")
            body, etag = fetched
            etag = etag.strip('"')
            pointer = ServingPointer.model_validate_json(body)
            if pointer.model != name:
                raise BundleRejectedError(f"pointers/{name}.json names the model {pointer.model!r}")
            if current is not None and current.pointer.manifest_key == pointer.manifest_key:
                # The same bundle promoted again: only the pointer's own fields are new.
                return _LoadOutcome(replace(current, pointer=pointer), etag, "")
            model = self._load_bundle(pointer)
        except (BundleRejectedError, BundleMissingError, ValidationError) as error:
            self._count_failure(name, pointer, error, refused=True)
            return _LoadOutcome(None, etag, f"version {pointer.version if pointer else '?'} refused: {error}")
        except Exception as error:  # S3 or the network: the next refresh tries again
            self._count_failure(name, pointer, error, refused=False)
            return _LoadOutcome(None, None, f"could not be loaded: {error}")
        self.metrics.reloads.labels(name).inc()
        self.metrics.version.labels(name).set(_version_number(model.version))
        LOG.info(
            "model loaded: model=%s version=%s",
            name,
            model.version,
            extra={"model": name, "version": model.version, "previous": current.version if current else None},
        )
        return _LoadOutcome(model, etag, "")

    def _load_bundle(self, pointer: ServingPointer) -> LoadedModel:
        return LoadedModel.of(fetch_bundle(self.bucket, pointer), max_batch=self.max_batch)

    def _count_failure(
        self, name: str, pointer: ServingPointer | None, error: Exception, *, refused: bool
    ) -> None:
        self.metrics.failures.labels(name).inc()
        version = pointer.version if pointer else None
        serving = self._models[name].version if name in self._models else None
        LOG.error(
            "model reload failed: model=%s version=%s refused=%s still_serving=%s reason=%s",
            name,
            version,
            refused,
            serving,
            error,
            extra={"model": name, "version": version, "refused": refused, "still_serving": serving},
        )

    def start_background(
        self, *, poll_seconds: float, reload_queue_url: str | None, queue_wait_seconds: int = 5
    ) -> None:
        """The EC2 server's refreshers; stop_background ends them."""
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll, args=(poll_seconds,), name="pointer-poll")]
        if reload_queue_url:
            self._threads.append(
                threading.Thread(
                    target=self._follow_queue,
                    args=(reload_queue_url, queue_wait_seconds),
                    name="reload-queue",
                )
            )
        for thread in self._threads:
            thread.daemon = True  # never keep a dying process alive
            thread.start()

    def stop_background(self, timeout: float = 30) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _poll(self, seconds: float) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # the thread must outlive any one failure; the next poll retries
                LOG.exception("pointer poll failed: bucket=%s", self.bucket, extra={"bucket": self.bucket})
            self._stop.wait(seconds)

    def _follow_queue(self, queue_url: str, wait_seconds: int) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                messages = sqs.receive(queue_url, wait_seconds=wait_seconds, visibility_seconds=30)
                if messages:
                    # A message is only a hint that some pointer moved: which one is in the listing.
                    self.refresh()
                    for message in messages:
                        sqs.delete(queue_url, message["ReceiptHandle"])
                failures = 0
            except Exception:  # the thread must outlive any one failure; it backs off and retries
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * random.uniform(0.5, 1)  # noqa: S311
                LOG.exception("reload queue failed: retrying in %.1fs", delay, extra={"queue_url": queue_url})
                self._stop.wait(delay)


def keep_out_of_collections() -> None:
    """Move every object alive now (the imported libraries, the loaded models) out of the cyclic
    garbage collector's sight. A full collection walks them all, ~60 ms with fastapi, boto3 and
    onnxruntime loaded, and under load it struck often enough to make that the p99 latency (64 ms
    against a 2 ms median, in benchmarks/results/serving.md). Frozen objects are still freed when their
    last reference goes; only a cycle among them would outlive its use, and models hold none."""
    gc.freeze()


@dataclass(frozen=True)
class _LoadOutcome:
    model: LoadedModel | None  # None: the previous version (if any) keeps serving
    handled_etag: str | None  # the pointer ETag not to fetch again (None: retry at the next refresh)
    problem: str


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None
    return trim


def return_freed_memory() -> None:
    """glibc keeps the heap a freed ONNX session used (tens of MB for a large forest) unless asked."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _version_number(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return math.nan
