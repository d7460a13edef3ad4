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


RECIPE_PREFIX = "recipes/"


def recipe_key(model: str) -> str:
    """In the config bucket: the recipe the model's contract names (training.recipe), uploaded with
    it by `arrival contract put`. Only the operator writes here; the trainer reads, nothing else."""
    return f"{RECIPE_PREFIX}{model}.py"


def accepted_list_key(model: str) -> str:
    """In the processed bucket: every dataset accepted for the model, with its lineage."""
    return f"{model}/accepted.json"


def processed_dataset_key(model: str, content_hash: str) -> str:
    """In the processed bucket: an accepted file, as Parquet, named by its content's hash (the same
    bytes uploaded twice are one dataset)."""
    return f"{model}/data/{content_hash}.parquet"


def lineage_key(model: str, content_hash: str) -> str:
    """In the processed bucket, beside the dataset: where it came from and what ingest did to it."""
    return f"{model}/data/{content_hash}.lineage.json"


# In the quarantine bucket, beside each rejected file (common/ingest.py's quarantine_key): its report.
REPORT_SUFFIX = ".report.json"


def quarantine_report_key(quarantined_key: str) -> str:
    return f"{quarantined_key}{REPORT_SUFFIX}"


# In the inference bucket: what to score goes under <model>/input/, and its results under output/.
BATCH_INPUT_FOLDER = "input"
BATCH_OUTPUT_FOLDER = "output"


def batch_input_key(model: str, name: str) -> str:
    """What the batch function scores: `name` with its format's suffix."""
    return f"{model}/{BATCH_INPUT_FOLDER}/{name}"


def batch_output_key(model: str, name: str, kind: str) -> str:
    """Where a batch input's results go: `kind` is predictions.parquet, rejects.parquet,
    manifest.json or failure.json. Under output/, which the batch function never scores."""
    return f"{model}/{BATCH_OUTPUT_FOLDER}/{name}.{kind}"


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


# Under the heartbeats' prefix, so the roles that beat and read heartbeats reach them, and the same
# lifecycle rule sweeps them.
QUEUED_TRAINING_PREFIX = f"{TRAINER_HEARTBEAT_PREFIX}queued/"


def queued_training_key(model: str) -> str:
    """In the processed bucket: the model has a training job no trainer has taken up yet. Written
    before the job is sent, deleted by the trainer that takes up one of the model's jobs: the
    reconciler counts these models, which SQS's message counts cannot tell apart."""
    return f"{QUEUED_TRAINING_PREFIX}{model}.json"


OUTCOME_PREFIX = "_arrival/outcomes/"


def outcome_key(raw_key: str, version_id: str | None) -> str:
    """In the processed bucket: what became of one version of a raw object (common/outcomes.py).
    Named by the SHA-256 of the raw key, which may take all of S3's 1,024 bytes, and by the version
    id (`null`, as S3 names it, for an object stored before versioning)."""
    digest = hashlib.sha256(raw_key.encode()).hexdigest()
    return f"{OUTCOME_PREFIX}{digest}/{version_id or 'null'}.json"


SWEEP_STATE_KEY = "_arrival/sweep/state.json"
"""In the processed bucket: how far the sweep has checked the raw bucket, and which run holds it
(common/sweep.py)."""


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
