"""Where arrival keeps things in its buckets: the key conventions the ingest function, the worker and
the CLI share. Kept free of heavy imports: the worker and the CLI read it at start."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

CONTRACT_PREFIX = "contracts/"


def contract_key(model: str) -> str:
    """In the config bucket."""
    return f"{CONTRACT_PREFIX}{model}.yaml"


def accepted_list_key(model: str) -> str:
    """In the processed bucket: every dataset accepted for the model, with its lineage."""
    return f"{model}/accepted.json"


def accepted_list_hash(document: dict[str, Any]) -> str:
    """Identifies the set of datasets a training would use; the training job's deduplication id.
    The model is part of it: FIFO deduplication spans the whole queue, and two models may well
    accept the same bytes."""
    hashes = sorted(entry["content_hash"] for entry in document["datasets"])
    return hashlib.sha256(json.dumps([document["model"], hashes]).encode()).hexdigest()


TRAINER_HEARTBEAT_PREFIX = "_arrival/trainers/"


def trainer_heartbeat_key(instance_id: str) -> str:
    """In the processed bucket: a running trainer renews it while it works (`renewed_at`, epoch
    seconds); the reconciler takes a trainer whose heartbeat went stale for dead."""
    return f"{TRAINER_HEARTBEAT_PREFIX}{instance_id}.json"


CAPTURE_SEGMENT = "capture"


def capture_prefix(model: str) -> str:
    """In the capture bucket: what serving captured of the model's requests, by hour."""
    return f"{model}/{CAPTURE_SEGMENT}/"


def capture_hour_prefix(model: str, moment: datetime) -> str:
    """Where records captured in `moment`'s hour (UTC) go: the drift report lists a window by hour."""
    return f"{capture_prefix(model)}{moment.astimezone(UTC):%Y/%m/%d/%H}/"


def drift_prefix(model: str) -> str:
    """In the models bucket: the scheduled drift reports, `latest.json`, and reference samples."""
    return f"{model}/drift/"
