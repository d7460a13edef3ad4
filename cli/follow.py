"""`arrival upload`: put a file under the raw bucket, and follow it through ingest, training and the
gate until its outcome."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cli.contracts import contract_bytes, file_hashes, read_file
from cli.operations import T, outputs_of, wait_for
from common.adapters import s3
from common.contracts import data_format_of
from common.layout import accepted_list_key


@dataclass(frozen=True)
class Uploaded:
    model: str
    bucket: str
    key: str
    version_id: str | None
    content_hash: str
    etag: str

    @property
    def source_uri(self) -> str:
        """As the trainer lists it in a run's `lineage.sources` (worker/decision.py)."""
        return f"s3://{self.bucket}/{self.key}?versionId={self.version_id}"


_CONTENT_TYPES = {
    "csv": "text/csv",
    "csv.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}


def upload(path: Path, model: str, stack_name: str) -> Uploaded:
    """Put the file in the raw bucket under `<model>/<its name>`, once its model has a contract."""
    body = read_file(path, "data")
    contract_bytes(model, stack_name)  # refuse before upload: ingest would only quarantine it
    bucket = outputs_of(stack_name)["RawBucketName"]
    key = f"{model}/{path.name}"
    data_format = data_format_of(path.name)
    content_type = _CONTENT_TYPES.get(data_format.value if data_format else "", "application/octet-stream")
    version_id = s3.put_bytes(bucket, key, body, content_type)
    content_hash, md5 = file_hashes(path)
    return Uploaded(model, bucket, key, version_id, content_hash, md5)


@dataclass(frozen=True)
class FollowResult:
    """Where a file's journey got to: accepted (on its way), promoted, rejected, quarantined or
    duplicate."""

    outcome: str
    detail: str = ""
    version: str | None = None
    report: dict[str, Any] | None = None
    report_uri: str | None = None
    duplicate_of: str | None = None
    accepted: dict[str, Any] | None = None


class Follower:
    """Watches the deployed stack from outside, as a user would, through arrival's adapters."""

    def __init__(self, stack_name: str, say: Callable[[str], None]) -> None:
        self.outputs = outputs_of(stack_name)
        self.stack_name = stack_name
        self.say = say

    def accepted_entries(self, model: str) -> list[dict[str, Any]]:
        found = s3.get_bytes(self.outputs["ProcessedBucketName"], accepted_list_key(model))
        return list(json.loads(found[0])["datasets"]) if found else []

    def accepted_copy_of(self, uploaded: Uploaded) -> dict[str, Any] | None:
        """The accepted dataset with the same bytes from another upload: ingest keeps one copy of
        the same data per model, so this upload will never train anything."""
        for entry in self.accepted_entries(uploaded.model):
            same_source = (entry["source"]["key"], entry["source"].get("version_id")) == (
                uploaded.key,
                uploaded.version_id,
            )
            if entry["content_hash"] == uploaded.content_hash and not same_source:
                return entry
        return None

    def ingested(self, uploaded: Uploaded) -> FollowResult | None:
        """How ingest judged this object version (accepted, with its entry; quarantined; duplicate),
        or None while it has not."""
        from common.ingest import quarantine_key
        from common.layout import quarantine_report_key

        for entry in self.accepted_entries(uploaded.model):
            if (entry["source"]["key"], entry["source"].get("version_id")) == (
                uploaded.key,
                uploaded.version_id,
            ):
                return FollowResult("accepted", accepted=entry)
        bucket = self.outputs["QuarantineBucketName"]
        report_key = quarantine_report_key(quarantine_key(uploaded.key))
        found = s3.get_bytes(bucket, report_key)
        report = json.loads(found[0]) if found else None
        if report and report["source"].get("version_id") == uploaded.version_id:
            return FollowResult(
                "quarantined", report["rule"], report=report, report_uri=f"s3://{bucket}/{report_key}"
            )
        if (copy := self.accepted_copy_of(uploaded)) is not None:
            source = copy["source"]
            return FollowResult(
                "duplicate",
                duplicate_of=f"s3://{source['bucket']}/{source['key']}?versionId={source['version_id']}",
            )
        return None

    def dead_lettered_reason(self, model: str, since_ms: int) -> str | None:
        """Why the model's training job was dead-lettered after `since_ms`, if it was: the job is
        the model's, not the file's, so a job failed after the upload is this upload's failure."""
        from common.adapters import sqs

        for message in sqs.peek(self.outputs["TrainingDeadLetterQueueUrl"]):
            sent_ms = int(message.get("Attributes", {}).get("SentTimestamp", 0))
            try:
                job_model = json.loads(message["Body"]).get("model")
            except ValueError:
                continue
            if job_model == model and sent_ms >= since_ms:
                reason = message.get("MessageAttributes", {}).get("failure_reason", {})
                return str(reason.get("StringValue") or "no reason recorded")
        return None

    def trainer(self) -> str | None:
        from common.adapters import ec2
        from common.reconcile import TRAINER_ROLE

        live = ec2.live_instances(TRAINER_ROLE, self.stack_name)
        return live[0] if live else None


def follow_upload(follow: Follower, uploaded: Uploaded, timeout: float) -> FollowResult:
    """Follow one object version through ingest, training and the gate, saying each step as it
    happens. Raises TimeoutError if the chain has not decided within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    ingested = wait_for(partial(follow.ingested, uploaded), deadline, "ingest")
    if ingested.accepted is None:
        return ingested
    entry = ingested.accepted
    follow.say(
        f"ingest Lambda: valid against the contract; {entry['rows']} rows "
        f"({entry['duplicate_rows_dropped']} duplicates dropped) -> "
        f"s3://{follow.outputs['ProcessedBucketName']}/{entry['processed_key']}"
    )
    queue = follow.outputs["TrainingQueueUrl"].rsplit("/", 1)[-1]
    follow.say(f"training job queued on {queue} (group '{uploaded.model}')")
    return _follow_training(follow, uploaded, deadline)


class TrainingFailedError(Exception):
    """The upload's training job was dead-lettered: the message is its failure reason."""


def _follow_training(follow: Follower, uploaded: Uploaded, deadline: float) -> FollowResult:
    from common.adapters import tracking

    model = uploaded.model
    uploaded_ms = int(time.time() * 1000) - 1000  # the follower's clock against SQS's: a second's slack

    def unless_failed(probe: Callable[[], T | None], what: str) -> T:
        def probe_or_fail() -> T | None:
            found = probe()
            if found is None and (reason := follow.dead_lettered_reason(model, uploaded_ms)):
                raise TrainingFailedError(reason)
            return found

        return wait_for(probe_or_fail, deadline, what)

    instance_id = unless_failed(follow.trainer, "a trainer instance")
    follow.say(f"trainer {instance_id} running (started by the reconciler)")
    run = unless_failed(lambda: tracking.run_with_source(model, uploaded.key), "an MLflow run")
    follow.say(f"MLflow run {run.run_id} is {run.status} (DVC: prepare, train, evaluate)")
    # The version id pins this upload: a file uploaded again under the same key is another source.
    decision = unless_failed(
        lambda: tracking.decided_version_with_source(model, uploaded.source_uri), "a judged version"
    )
    tags = decision.tags
    if "promotion" in tags:
        verdict, reason = "promoted", tags["promotion"]
    elif "rejected" in tags:
        verdict, reason = "rejected", tags["rejected"]
    else:  # passed the gate; the contract asks a person to approve it (superseded: a newer one waits)
        verdict, reason = "awaiting approval", tags.get("awaiting_approval") or tags.get("superseded", "")
    follow.say(f"version {decision.version} registered; gate: {verdict}: {reason}")
    return FollowResult(verdict.replace(" ", "_"), reason, version=decision.version)
