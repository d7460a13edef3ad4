"""The models serving answers with: one immutable snapshot `name -> LoadedModel`, replaced whole, so a
request reads one reference and always sees a consistent set of models.

A refresh lists the pointers once (keys and ETags), fetches only pointers whose ETag moved, loads and
checks a new version's bundle off the request path, then swaps the snapshot. A bundle that fails
keeps the previous version serving. On EC2 two threads of each worker process call refresh: one when
the instance's reload signal moves (a hint that a pointer moved, fanned out from the reload queue:
serving/reload.py), one every `poll_seconds` in case a hint is lost. In Lambda there are no
threads: a request refreshes first if the last look at the pointers is too old, and a lazy store loads
a model only when a request first asks for it.

Readiness is per model, because every instance lists the same bucket: whatever one model's pointer or
bundle does to one instance, it does to all of them, and a load balancer would pull them all at once.
An instance is unready only while it has never listed the pointers, or when it listed some and the
first load of every one of them failed. A model that answered keeps answering its last good version
until its pointer is deleted, whatever a later pointer, bundle or listing does.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError

from common.adapters import s3
from common.bundle_loader import BundleMissingError, BundleRejectedError, fetch_bundle
from common.bundles import POINTERS_PREFIX, ServingPointer, model_of_pointer_key, pointer_key
from serving.bundle import LoadedModel
from serving.reload_signal import SIGNAL_CHECK_SECONDS, ReloadSignal, ReloadSignalWatch

LOG = logging.getLogger("arrival.serving")
# A missing bundle is looked for again after 1 s, then 2, 4, ... up to a minute: soon enough for a
# pointer that became visible just before its bundle, and one GET a minute for one that names a bundle
# that never comes.
FIRST_MISSING_RETRY_SECONDS = 1.0
MAX_MISSING_RETRY_SECONDS = 60.0
NEVER_LISTED = "the pointers have not been listed yet"


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


class Cause(StrEnum):
    refused = "refused"  # the pointer or its bundle is wrong: tried again once the pointer changes
    missing = "missing"  # a file of the bundle is not in the bucket (yet): tried again with backoff
    unavailable = "unavailable"  # S3 or the network failed: tried again at the next refresh


class PendingVersion(BaseModel):
    """A model's newest pointer that does not answer (yet): the server's own reason, for `arrival
    status` and operators. The model keeps answering its previous version, if it had one."""

    version: str | None  # the version the pointer names; None when the pointer itself is unreadable
    cause: Cause
    reason: str
    failures: int  # consecutive failed loads of this pointer
    next_try: str  # "when its pointer changes", "at the next refresh" or "in 8 s"


@dataclass(frozen=True)
class _Pending:
    version: str | None
    cause: Cause
    reason: str
    etag: str | None  # the pointer's ETag as it was read (None: the pointer could not be read)
    failures: int = 1
    retry_at: float | None = None  # the clock's time before which a missing bundle is not looked for

    def due(self, etag: str, now: float) -> bool:
        """Whether the pointer, listed now with this ETag, is worth loading again."""
        if etag != self.etag:
            return True  # a moved pointer is always looked at
        if self.cause is Cause.refused:
            return False  # the same pointer leads to the same refused bundle
        return self.retry_at is None or now >= self.retry_at

    def public(self, now: float) -> PendingVersion:
        if self.cause is Cause.refused:
            next_try = "when its pointer changes"
        elif self.retry_at is None or self.retry_at <= now:
            next_try = "at the next refresh"
        else:
            next_try = f"in {math.ceil(self.retry_at - now)} s"
        return PendingVersion(
            version=self.version,
            cause=self.cause,
            reason=self.reason,
            failures=self.failures,
            next_try=next_try,
        )


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None = None  # why the instance is not ready
    # A model with a pointer and no version answering, and why ("pointers" before the first listing).
    missing: dict[str, str] = field(default_factory=dict)
    # Models whose newest pointer does not load while an older version keeps answering: worth an alert,
    # not a reason for a load balancer to pull every instance at once.
    stale: dict[str, str] = field(default_factory=dict)
    # A lazy store's (Lambda's) models with a pointer, loaded when a request first asks for them.
    unloaded: list[str] = field(default_factory=list)
    # The last listing's failure, while the one before it keeps answering.
    listing: str | None = None


class ModelStore:
    def __init__(
        self,
        bucket: str,
        *,
        max_batch: int,
        registry: CollectorRegistry | None = None,
        lazy: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.max_batch = max_batch
        self.registry = registry or CollectorRegistry()
        self.metrics = ReloadMetrics(self.registry)
        # Lazy (Lambda): a refresh keeps up to date only the models requests asked for, and a model is
        # loaded when first asked for, so a cold start pays for one model, not for every one.
        self.lazy = lazy
        self._clock = clock
        self._models: Mapping[str, LoadedModel] = MappingProxyType({})
        self._retired: Mapping[str, LoadedModel] | None = None  # the snapshot the last swap replaced
        # Written only under _refresh_lock, and replaced rather than changed, so readers need no lock.
        self._listed: Mapping[str, str] | None = None  # model -> pointer ETag, at the last good listing
        self._loaded_etags: dict[str, str] = {}  # model -> ETag of the pointer its loaded version came from
        self._pending: dict[str, _Pending] = {}  # model -> its newest pointer, when that does not answer
        self._wanted: frozenset[str] = frozenset()  # a lazy store's models asked for
        self._ignored_keys: frozenset[str] = frozenset()  # keys under pointers/ that are no pointer
        self._listing_problem: str | None = None
        self._frozen = False
        self._last_check: float | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """The current snapshot: read it once per request."""
        return self._models

    def readiness(self) -> Readiness:
        """Unready only before the first listing, or when every model listed failed its first load."""
        models, pending, listed = self._models, self._pending, self._listed
        if listed is None:
            why = self._listing_problem or NEVER_LISTED
            return Readiness(False, why, missing={"pointers": why})
        missing = {name: p.reason for name, p in sorted(pending.items()) if name not in models}
        stale = {name: p.reason for name, p in sorted(pending.items()) if name in models}
        unloaded = sorted(name for name in listed if name not in models and name not in pending)
        reason = None
        if listed and not models and not unloaded:
            reason = f"the first load of every model failed ({', '.join(sorted(missing))})"
        return Readiness(reason is None, reason, missing, stale, unloaded, self._listing_problem)

    @property
    def listed(self) -> list[str]:
        """The models with a pointer at the last good listing."""
        return sorted(self._listed or ())

    def pending(self, name: str) -> PendingVersion | None:
        """The model's newest pointer, when it does not answer: what failed, and when it is tried again."""
        found = self._pending.get(name)
        return found.public(self._clock()) if found else None

    def refresh(self) -> None:
        """Bring the snapshot in line with the pointers. Raises only if the pointers cannot be listed;
        then the last listing keeps answering."""
        with self._refresh_lock:
            self._last_check = self._clock()
            self._release_retired()
            try:
                listing = s3.list_objects(self.bucket, POINTERS_PREFIX)
            except Exception as error:
                self._listing_problem = f"cannot list s3://{self.bucket}/{POINTERS_PREFIX}: {error}"
                raise
            listed = self._pointers_of(listing)
            self._keep_out_of_collections_once()
            self._apply(listed, listed if not self.lazy else self._wanted & listed.keys())
            self._listed, self._listing_problem = MappingProxyType(listed), None

    def refresh_if_older_than(self, seconds: float) -> None:
        """Lambda's check on the request path; a failure is logged and the loaded models keep answering."""
        last = self._last_check
        if last is not None and self._clock() - last < seconds:
            return
        try:
            self.refresh()
        except Exception:
            LOG.exception("pointer check failed: bucket=%s", self.bucket, extra={"bucket": self.bucket})

    def load_when_asked(self, names: Iterable[str]) -> None:
        """A lazy store loads a listed model the first time a request asks for it (a no-op otherwise,
        and for a name with no pointer): only that model's bundle is read and checked."""
        listed = self._listed
        if not self.lazy or listed is None:
            return
        new = {name for name in names if name in listed and name not in self._wanted}
        if not new:
            return
        with self._refresh_lock:
            new -= self._wanted
            self._wanted |= new
            if self._listed is not None:
                self._apply(self._listed, new & self._listed.keys())

    def _pointers_of(self, listing: list[tuple[str, str]]) -> dict[str, str]:
        """model -> ETag of its pointer. Any other key is ignored, with a warning once per key: a stray
        copy (pointers/iris.json.bak) is nobody's pointer, and must not look like a failing model."""
        listed: dict[str, str] = {}
        ignored: set[str] = set()
        for key, etag in listing:
            model = model_of_pointer_key(key)
            if model is None:
                ignored.add(key)
            else:
                listed[model] = etag
        for key in sorted(ignored - self._ignored_keys):
            LOG.warning(
                "ignored a key that is not a pointer: s3://%s/%s (a pointer is %s<model>.json)",
                self.bucket,
                key,
                POINTERS_PREFIX,
                extra={"bucket": self.bucket, "key": key},
            )
        self._ignored_keys = frozenset(ignored)
        return listed

    def _apply(self, listed: Mapping[str, str], names: Iterable[str]) -> None:
        """Load the named models whose pointer moved, or whose failure is due for another try."""
        models = {name: model for name, model in self._models.items() if name in listed}
        loaded_etags = {name: etag for name, etag in self._loaded_etags.items() if name in listed}
        pending = {name: problem for name, problem in self._pending.items() if name in listed}
        for gone in set(self._models) - set(listed):
            self.metrics.version.remove(gone)
        now = self._clock()
        for name in sorted(names):
            etag = listed[name]
            if loaded_etags.get(name) == etag:
                pending.pop(name, None)  # the pointer is back to the version that answers
                continue
            previous = pending.get(name)
            if previous is not None and not previous.due(etag, now):
                continue
            outcome = self._load(name, models.get(name), previous)
            if isinstance(outcome, _Pending):
                pending[name] = outcome
            else:
                model, loaded_etag = outcome
                models[name], loaded_etags[name] = model, loaded_etag
                pending.pop(name, None)
        self._loaded_etags, self._pending = loaded_etags, pending
        if models.keys() != self._models.keys() or any(models[n] is not self._models[n] for n in models):
            self._retired, self._models = self._models, MappingProxyType(models)

    def _release_retired(self) -> None:
        """Drop the snapshot replaced at the previous refresh. The requests that held it ended long ago,
        so its ONNX sessions are freed here, off the request path, and their heap goes back to the OS."""
        if self._retired is not None:
            self._retired = None
            return_freed_memory()

    def _keep_out_of_collections_once(self) -> None:
        """Once, at the first listing: by then the libraries are imported and the S3 client built (most
        of the heap), and no model is loaded yet. See keep_out_of_collections for why only once."""
        if not self._frozen:
            self._frozen = True
            keep_out_of_collections()

    def _load(
        self, name: str, current: LoadedModel | None, previous: _Pending | None
    ) -> tuple[LoadedModel, str] | _Pending:
        pointer: ServingPointer | None = None
        etag: str | None = None
        try:
            fetched = s3.get_bytes(self.bucket, pointer_key(name))
            if fetched is None:
                return _Pending(None, Cause.unavailable, "the pointer vanished while being read", None)
            body, etag = fetched
            etag = etag.strip('"')
            pointer = ServingPointer.model_validate_json(body)
            if pointer.model != name:
                raise BundleRejectedError(f"pointers/{name}.json names the model {pointer.model!r}")
            if current is not None and current.pointer.manifest_key == pointer.manifest_key:
                # The same bundle promoted again: only the pointer's own fields are new.
                return replace(current, pointer=pointer), etag
            model = LoadedModel.of(fetch_bundle(self.bucket, pointer), max_batch=self.max_batch)
        except (BundleRejectedError, ValidationError) as error:
            self._count_failure(name, pointer, error, Cause.refused)
            version = pointer.version if pointer else None
            what = f"version {version}" if version else f"pointers/{name}.json"
            return _Pending(version, Cause.refused, f"{what} refused: {error}", etag)
        except BundleMissingError as error:
            self._count_failure(name, pointer, error, Cause.missing)
            return self._missing(pointer, etag, previous, error)
        except Exception as error:  # S3 or the network: the next refresh tries again
            self._count_failure(name, pointer, error, Cause.unavailable)
            version = pointer.version if pointer else None
            return _Pending(version, Cause.unavailable, f"could not be loaded: {error}", etag)
        self.metrics.reloads.labels(name).inc()
        self.metrics.version.labels(name).set(_version_number(model.version))
        LOG.info(
            "model loaded: model=%s version=%s",
            name,
            model.version,
            extra={"model": name, "version": model.version, "previous": current.version if current else None},
        )
        return model, etag

    def _missing(
        self, pointer: ServingPointer | None, etag: str | None, previous: _Pending | None, error: Exception
    ) -> _Pending:
        same = previous is not None and previous.cause is Cause.missing and previous.etag == etag
        failures = previous.failures + 1 if previous is not None and same else 1
        delay = min(MAX_MISSING_RETRY_SECONDS, FIRST_MISSING_RETRY_SECONDS * 2 ** (failures - 1))
        version = pointer.version if pointer else None
        reason = f"version {version}'s bundle is missing: {error}"
        return _Pending(version, Cause.missing, reason, etag, failures, self._clock() + delay)

    def _count_failure(
        self, name: str, pointer: ServingPointer | None, error: Exception, cause: Cause
    ) -> None:
        self.metrics.failures.labels(name).inc()
        version = pointer.version if pointer else None
        serving = self._models[name].version if name in self._models else None
        LOG.error(
            "model reload failed: model=%s version=%s cause=%s still_serving=%s reason=%s",
            name,
            version,
            cause,
            serving,
            error,
            extra={"model": name, "version": version, "cause": str(cause), "still_serving": serving},
        )

    def start_background(
        self,
        *,
        poll_seconds: float,
        reload_signal: ReloadSignal | None,
        signal_check_seconds: float = SIGNAL_CHECK_SECONDS,
    ) -> None:
        """The EC2 server's refreshers: a poll, and a watch on the instance's reload signal (its one
        reader of the reload queue bumps it: serving/reload.py). stop_background ends them."""
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll, args=(poll_seconds,), name="pointer-poll")]
        if reload_signal is not None:
            self._threads.append(
                threading.Thread(
                    target=self._follow_signal,
                    args=(ReloadSignalWatch(reload_signal), signal_check_seconds),
                    name="reload-signal",
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

    def _follow_signal(self, watch: ReloadSignalWatch, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                if watch.changed():
                    # A hint that some pointer moved: which one is in the listing.
                    self.refresh()
            except Exception:  # the thread must outlive any one failure; the poll is the safety net
                LOG.exception(
                    "reload after a hint failed: bucket=%s", self.bucket, extra={"bucket": self.bucket}
                )


def keep_out_of_collections() -> None:
    """Move every object alive now (the imported libraries, the S3 client) out of the cyclic garbage
    collector's sight. A full collection walks them all, ~60 ms with fastapi, boto3 and onnxruntime
    loaded, and under load it struck often enough to make that the p99 latency (64 ms against a 2 ms
    median, in benchmarks/results/serving.md). Frozen objects are still freed when their last reference
    goes, but a cycle among them never is: so this collects first (garbage alive now is not frozen with
    the rest), and runs once per store, not at every swap, where it froze whatever cycles requests and
    retired models had left at that moment (benchmarks/results/gc_freeze.md measures both)."""
    gc.collect()
    gc.freeze()


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
