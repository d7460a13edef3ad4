"""The sweep: every version that lands in the raw bucket gets an outcome, even when its S3
notification never reaches ingest (S3 delivers notifications at least once, but not always).

On a schedule, a pass walks the raw bucket's versions page by page (ListObjectVersions) and takes
those that landed after where the last pass ended, less a lookback, and before its own start, less
a grace period. A version without a marker (common/outcomes.py) is one no notification brought to
ingest: the sweep sends the notification S3 would have sent onto the ingest queue, then marks the
version `requeued`, so it is sent once. The sweep never judges a file itself: ingest does, as for
any other, and its idempotency makes a real notification that arrives late harmless.

A run stops after `max_versions_per_run` versions, or when its time runs short, and the next run
goes on from there. Where a pass stands lives in one object (`layout.SWEEP_STATE_KEY`), held by one
run at a time through S3's conditional writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote_plus

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from common import outcomes
from common.adapters import s3, sqs
from common.layout import SWEEP_STATE_KEY
from common.observability import logger
from common.outcomes import Pending, RawObject
from common.settings import SweepSettings

NOTIFICATIONS_LOST_METRIC = "NotificationsLost"
# The message attribute that tells a re-queued notification from S3's own (the ingest function
# reads the body alone).
REQUEUED_BY_ATTRIBUTE = "requeued_by"
REQUEUED_BY = "sweep"
# Time kept back at the end of a run to save where it stopped: a page's checks take seconds.
RUN_MARGIN_SECONDS = 30.0
# Versions listed per request: ListObjectVersions' most.
PAGE_SIZE = 1000
# The markers are looked up in parallel, as many as botocore keeps connections open by default.
_LOOKUPS_IN_PARALLEL = 10


class SweepStatus(StrEnum):
    finished = "finished"  # the pass covered the whole bucket
    paused = "paused"  # the run reached its limit; the next one goes on from there
    held = "held"  # another run holds the sweep
    deferred = "deferred"  # notifications still wait in the ingest queue: none is lost yet


@dataclass(frozen=True)
class SweepState:
    # Versions that landed before this, less the lookback, have been checked.
    checked_through: float
    # The pass under way: when it started, and the last version it has checked.
    pass_started_at: float | None = None
    resume_after: tuple[str, str] | None = None
    # A run holds the sweep until then (a run that dies lets go when its time is up).
    held_until: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SweepState:
        resume = document.get("resume_after")
        return cls(
            checked_through=float(document["checked_through"]),
            pass_started_at=document.get("pass_started_at"),
            resume_after=(resume[0], resume[1]) if resume else None,
            held_until=float(document.get("held_until", 0.0)),
        )


@dataclass
class SweepReport:
    status: SweepStatus
    detail: str = ""
    listed: int = 0  # versions this run listed
    checked: int = 0  # of those, the ones in the pass's window, whose markers it looked up
    requeued: list[dict[str, str]] = field(default_factory=list)  # key and version id of each


def notification_for(bucket: str, version: s3.ObjectVersion) -> dict[str, Any]:
    """The S3 event notification (version 2.1) S3 would have sent for the version: what ingest
    reads of it (bucket, URL-encoded key, version id) and the object's size, ETag and time. S3
    leaves out the version id of an object stored before versioning; so does this."""
    created = datetime.fromtimestamp(version.last_modified, UTC).isoformat(timespec="milliseconds")
    stored: dict[str, Any] = {"key": quote_plus(version.key, safe="/"), "size": version.size}
    stored["eTag"] = version.etag
    if version.version_id != "null":
        stored["versionId"] = version.version_id
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": created.replace("+00:00", "Z"),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "arrival-sweep"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "arrival-sweep",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": stored,
                },
            }
        ]
    }


def _requeue(settings: SweepSettings, version: s3.ObjectVersion) -> None:
    # Sent, then marked: a run that dies in between sends it again next time, which ingest's
    # idempotency absorbs; the other order could mark a version whose notification never left.
    body = json.dumps(notification_for(settings.raw_bucket, version))
    sqs.send_with_attributes(settings.ingest_queue_url, body, {REQUEUED_BY_ATTRIBUTE: REQUEUED_BY})
    raw = RawObject(settings.raw_bucket, version.key, version.version_id)
    outcomes.mark_pending(settings.processed_bucket, raw, Pending.requeued)
    logger.warning(
        "no notification of this object reached ingest; sent one in its place",
        extra={"key": version.key, "version_id": version.version_id, "last_modified": version.last_modified},
    )


def _sweep_page(
    settings: SweepSettings, page: s3.VersionPage, window: tuple[float, float], pool: ThreadPoolExecutor
) -> tuple[int, list[s3.ObjectVersion]]:
    """Re-queue the page's versions in the window that have no marker; how many were in the window,
    and which were re-queued."""
    after, through = window
    candidates = [version for version in page.versions if after < version.last_modified <= through]
    marked = pool.map(
        lambda version: outcomes.is_marked(settings.processed_bucket, version.key, version.version_id),
        candidates,
    )
    lost = [version for version, seen in zip(candidates, marked, strict=True) if not seen]
    for version in lost:
        _requeue(settings, version)
    return len(candidates), lost


@dataclass(frozen=True)
class _Claim:
    state: SweepState
    etag: str
    pass_started_at: float


def _claim(settings: SweepSettings, now: float, seconds_left: Callable[[], float]) -> _Claim | SweepReport:
    """The state, held by this run until its time is up; or why this run stops."""
    found = s3.get_bytes(settings.processed_bucket, SWEEP_STATE_KEY)
    # A first run looks back from now: older objects had their notifications before the sweep existed.
    state = SweepState.from_json(json.loads(found[0])) if found else SweepState(checked_through=now)
    if state.held_until > now:
        return SweepReport(SweepStatus.held, "another run holds the sweep")
    if state.pass_started_at is None:
        waiting = sqs.waiting_messages(settings.ingest_queue_url)
        if waiting:
            # A notification still queued is late, not lost: a pass waits for the queue to drain.
            return SweepReport(SweepStatus.deferred, f"{waiting} notification(s) wait in the ingest queue")
        state = replace(state, pass_started_at=now, resume_after=None)
    state = replace(state, held_until=now + seconds_left())
    try:
        etag = s3.put_json_if(
            settings.processed_bucket, SWEEP_STATE_KEY, state.as_json(), etag=found[1] if found else None
        )
    except s3.PreconditionFailedError:
        return SweepReport(SweepStatus.held, "another run took the sweep first")
    return _Claim(state, etag, state.pass_started_at or now)


def _count_lost(settings: SweepSettings, count: int) -> None:
    with single_metric(name=NOTIFICATIONS_LOST_METRIC, unit=MetricUnit.Count, value=count) as metric:
        metric.add_dimension(name="stack", value=settings.stack_name)


def run_sweep(settings: SweepSettings, now: float, seconds_left: Callable[[], float]) -> SweepReport:
    """One run: start a pass or go on with the one under way, until the bucket's end, the run's
    version limit, or `seconds_left()` falls under the margin. `now` is the wall clock (epoch
    seconds), which the versions' LastModified is compared with."""
    claimed = _claim(settings, now, seconds_left)
    if isinstance(claimed, SweepReport):
        logger.info("sweep not run", extra={"status": claimed.status, "detail": claimed.detail})
        return claimed
    state, etag = claimed.state, claimed.etag
    window = (
        state.checked_through - settings.lookback_seconds,
        claimed.pass_started_at - settings.grace_seconds,
    )
    report = SweepReport(SweepStatus.paused)
    with ThreadPoolExecutor(max_workers=_LOOKUPS_IN_PARALLEL) as pool:
        while report.status is SweepStatus.paused:
            page = s3.list_versions(settings.raw_bucket, state.resume_after, PAGE_SIZE)
            checked, lost = _sweep_page(settings, page, window, pool)
            report.listed += len(page.versions)
            report.checked += checked
            report.requeued += [{"key": version.key, "version_id": version.version_id} for version in lost]
            out_of_room = (
                report.listed >= settings.max_versions_per_run or seconds_left() < RUN_MARGIN_SECONDS
            )
            if page.next_marker is None:
                state = SweepState(checked_through=window[1])
                report.status = SweepStatus.finished
            else:
                held_until = 0.0 if out_of_room else state.held_until
                state = replace(state, resume_after=page.next_marker, held_until=held_until)
            try:
                etag = s3.put_json_if(settings.processed_bucket, SWEEP_STATE_KEY, state.as_json(), etag=etag)
            except s3.PreconditionFailedError:
                # Its hold ran out and another run took over: that one goes on from the saved page.
                report.status, report.detail = SweepStatus.held, "another run took over the sweep"
            if out_of_room:
                break
    if report.requeued:
        _count_lost(settings, len(report.requeued))
    logger.info(
        "sweep run",
        extra={
            "status": report.status,
            "listed": report.listed,
            "checked": report.checked,
            "requeued": len(report.requeued),
        },
    )
    return report
