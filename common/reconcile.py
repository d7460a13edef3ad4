"""Making sure a trainer runs whenever training work is queued, and only one.

Runs after every enqueue and on a schedule. Concurrent runs serialise on a lease kept in S3 with
conditional writes, so ten simultaneous ingests start one instance, not ten.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from common.adapters import ec2, s3, sqs
from common.observability import logger
from common.settings import PipelineSettings

LEASE_KEY = "_arrival/leases/trainer-reconciler.json"
TRAINER_ROLE = "trainer"
# EC2's DescribeInstances is eventually consistent on AWS: an instance launched a moment ago may not
# be listed yet, so the last launch counts as live for this long.
LAUNCH_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class ReconcileOutcome:
    action: Literal["launched", "already_running", "no_work", "lease_busy"]
    instance_id: str | None = None


class Lease:
    """A mutual-exclusion lease: an S3 object naming its holder and when the lease lapses."""

    def __init__(self, bucket: str, key: str, ttl_seconds: float) -> None:
        self.bucket, self.key, self.ttl = bucket, key, ttl_seconds
        self.holder = uuid.uuid4().hex
        self.document: dict[str, Any] = {}
        self._etag: str | None = None

    def try_acquire(self) -> bool:
        current = s3.get_bytes(self.bucket, self.key)
        previous: dict[str, Any] = {} if current is None else json.loads(current[0])
        if previous.get("holder") and previous.get("expires_at", 0) > time.time():
            return False
        document = {**previous, "holder": self.holder, "expires_at": time.time() + self.ttl}
        try:
            self._etag = s3.put_json_if(self.bucket, self.key, document, etag=current[1] if current else None)
        except s3.PreconditionFailedError:
            return False
        self.document = document
        return True

    def acquire(self, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while not self.try_acquire():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def release(self, **remember: Any) -> None:
        document = {**self.document, **remember, "holder": None, "expires_at": 0}
        try:
            s3.put_json_if(self.bucket, self.key, document, etag=self._etag)
        except s3.PreconditionFailedError:
            logger.warning("reconciler lease was taken over before release; it had expired")


def _recent_launch(lease: Lease) -> str | None:
    """The instance launched moments ago, if DescribeInstances may simply not list it yet."""
    launch = lease.document.get("last_launch") or {}
    if not launch or time.time() - launch.get("at", 0) >= LAUNCH_GRACE_SECONDS:
        return None
    state = ec2.instance_state(str(launch["instance_id"]))
    return str(launch["instance_id"]) if state is None or state in ec2.LIVE_STATES else None


def ensure_trainer(settings: PipelineSettings, wait_seconds: float = 20.0) -> ReconcileOutcome:
    lease = Lease(settings.processed_bucket, LEASE_KEY, settings.reconcile_lease_seconds)
    if not lease.acquire(wait_seconds):
        # Another reconciler is at work; it, or the scheduled run, will see our job.
        logger.info("reconciler lease busy; leaving it to its holder")
        return ReconcileOutcome("lease_busy")
    remember: dict[str, Any] = {}
    try:
        if sqs.pending_messages(settings.training_queue_url) == 0:
            return ReconcileOutcome("no_work")
        live = ec2.live_instances(TRAINER_ROLE, settings.stack_name)
        if live:
            return ReconcileOutcome("already_running", live[0])
        if recent := _recent_launch(lease):
            return ReconcileOutcome("already_running", recent)
        instance_id = ec2.run_from_template(
            settings.trainer_launch_template_id, TRAINER_ROLE, settings.stack_name, client_token=lease.holder
        )
        remember["last_launch"] = {"instance_id": instance_id, "at": time.time()}
        logger.info("started a trainer", extra={"instance_id": instance_id})
        return ReconcileOutcome("launched", instance_id)
    finally:
        lease.release(**remember)
