"""What became of each version of a raw object, kept where the sweep can look it up by the version.

Ingest leaves one marker per version in the processed bucket (`layout.outcome_key`): `received` as
soon as a notification reaches it, then the version's outcome. An accepted or quarantined file has
other traces (the accepted list, the report), but a duplicate or an ignored one had none, and no
trace could be found from the version alone. The sweep (common/sweep.py) takes a version without a
marker for one whose notification never arrived: it sends one in its place and marks it `requeued`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.adapters import s3
from common.layout import outcome_key


class Outcome(StrEnum):
    """What ingest made of a file."""

    accepted = "accepted"
    duplicate = "duplicate"
    quarantined = "quarantined"
    ignored = "ignored"


class Pending(StrEnum):
    """A version on its way to an outcome."""

    received = "received"  # its notification reached ingest (which may still be retrying it)
    requeued = "requeued"  # none did; the sweep sent one in its place


@dataclass(frozen=True)
class RawObject:
    """One version of an object in the raw bucket, as a notification names it."""

    bucket: str
    key: str  # already URL-decoded
    version_id: str | None = None


def _marker(version: RawObject, status: Outcome | Pending, detail: str, model: str | None) -> dict[str, Any]:
    return {
        "bucket": version.bucket,
        "key": version.key,
        "version_id": version.version_id,
        "status": status.value,
        "model": model,
        "detail": detail,
        "at": time.time(),
    }


def mark_pending(processed_bucket: str, version: RawObject, status: Pending) -> bool:
    """Mark the version `received` or `requeued`, unless it has a marker already: a pending mark
    never hides an outcome, and a version ingest has seen stays seen. True if this call wrote it."""
    try:
        s3.put_json_if(
            processed_bucket,
            outcome_key(version.key, version.version_id),
            _marker(version, status, "", None),
            etag=None,
        )
    except s3.PreconditionFailedError:
        return False
    return True


def record_outcome(
    processed_bucket: str, version: RawObject, outcome: Outcome, *, detail: str = "", model: str | None = None
) -> Outcome:
    """Record the version's outcome and return the one on record. The first outcome stands, except
    that an acceptance replaces any other: a redelivered accepted file, which ingest finds a
    duplicate of itself, stays accepted; a file quarantined for want of a contract and replayed once
    there is one ends accepted."""

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is not None and current["status"] in set(Outcome) and outcome is not Outcome.accepted:
            return current
        return _marker(version, outcome, detail, model)

    recorded = s3.update_json(processed_bucket, outcome_key(version.key, version.version_id), change)
    return Outcome(recorded["status"])


def is_marked(processed_bucket: str, raw_key: str, version_id: str | None) -> bool:
    """Whether ingest has seen the version, or the sweep has re-queued it."""
    return s3.exists(processed_bucket, outcome_key(raw_key, version_id))
