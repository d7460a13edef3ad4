"""Making sure a trainer runs whenever training work is queued, and only one.

Runs after every enqueue and on a schedule. Concurrent runs serialise on a lease kept in S3 with
conditional writes, so ten simultaneous ingests start one instance, not ten. A trainer counts as
running only while it renews its heartbeat; one that stopped is terminated and replaced.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from common.adapters import ec2, functions, s3, sqs
from common.layout import trainer_heartbeat_key
from common.observability import logger
from common.settings import PipelineSettings

LEASE_KEY = "_arrival/leases/trainer-reconciler.json"
TRAINER_ROLE = "trainer"
# EC2's DescribeInstances is eventually consistent on AWS: an instance launched a moment ago may not
# be listed yet, so the last launch counts as live for this long.
LAUNCH_GRACE_SECONDS = 120.0
# The metrics the stack's alarms watch (template.yaml): a launch EC2 refused or failed (capacity, a
# quota, a bad image), and a trainer ended for a heartbeat that stopped or never came (a crash, a hang,
# an image that cannot start the worker), whose replacement will loop while the cause stays.
LAUNCH_FAILED_METRIC = "TrainerLaunchFailed"
HEARTBEAT_LOST_METRIC = "TrainerHeartbeatLost"


@dataclass(frozen=True)
class ReconcileOutcome:
    action: Literal["launched", "already_running", "no_work", "lease_busy", "lease_lost", "requested"]
    instance_id: str | None = None
    terminated: tuple[str, ...] = ()


class LeaseLostError(Exception):
    """The lease lapsed and another reconciler may hold it: acting now could start a second trainer."""


class Lease:
    """A mutual-exclusion lease: an S3 object naming its holder and when the lease lapses.

    The document also counts the trainers launched under it. The count names the next launch's
    client token, so a holder whose lease lapsed mid-launch and the one that took over ask EC2 for
    the same instance: EC2 starts one for a token, however often it is asked."""

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
        document = {
            # A lease document made anew (a new stack, a deleted key) must not reuse a past token.
            "epoch": uuid.uuid4().hex,
            "launches": 0,
            **previous,
            "holder": self.holder,
            "expires_at": time.time() + self.ttl,
        }
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

    def renew(self, needed_seconds: float) -> None:
        """Extend the lease by its TTL if it is still ours and leave at least `needed_seconds` of it;
        LeaseLostError otherwise."""
        document = {**self.document, "expires_at": time.time() + self.ttl}
        try:
            self._etag = s3.put_json_if(self.bucket, self.key, document, etag=self._etag)
        except s3.PreconditionFailedError as error:
            raise LeaseLostError("another reconciler took the lease over") from error
        self.document = document
        left = document["expires_at"] - time.time()
        if left < needed_seconds:
            raise LeaseLostError(f"{left:.1f} s of lease left, {needed_seconds:.1f} s needed")

    def launch_token(self) -> str:
        return f"{self.document['epoch']}-{self.document['launches']}"

    def record_launch(self, instance_id: str) -> None:
        launch = {"instance_id": instance_id, "at": time.time(), "token": self.launch_token()}
        self.document = {**self.document, "launches": self.document["launches"] + 1, "last_launch": launch}

    def release(self) -> None:
        document = {**self.document, "holder": None, "expires_at": 0}
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


def _count(metric_name: str, settings: PipelineSettings, value: int = 1) -> None:
    """One datapoint now, by stack: two stacks in one account alarm on their own trainers only."""
    with single_metric(name=metric_name, unit=MetricUnit.Count, value=value) as metric:
        metric.add_dimension(name="stack", value=settings.stack_name)


def _heartbeat_renewed_at(settings: PipelineSettings, instance_id: str) -> float | None:
    found = s3.get_bytes(settings.processed_bucket, trainer_heartbeat_key(instance_id))
    if found is None:
        return None
    try:
        return float(json.loads(found[0])["renewed_at"])
    except (ValueError, KeyError, TypeError):
        logger.warning("unreadable trainer heartbeat; taken as none", extra={"instance_id": instance_id})
        return None


def _is_alive(settings: PipelineSettings, instance: ec2.Instance, now: float) -> bool:
    renewed_at = _heartbeat_renewed_at(settings, instance.instance_id)
    if renewed_at is None:
        return now - instance.launched_at < settings.trainer_boot_grace_seconds
    return now - renewed_at <= settings.trainer_heartbeat_stale_seconds


def _end_stopped_trainers(settings: PipelineSettings, now: float) -> tuple[list[str], tuple[str, ...]]:
    """The stack's trainers that are alive; those whose heartbeat stopped are terminated."""
    alive: list[str] = []
    stopped: list[str] = []
    for instance in ec2.live_instances_launched(TRAINER_ROLE, settings.stack_name):
        (alive if _is_alive(settings, instance, now) else stopped).append(instance.instance_id)
    for instance_id in stopped:
        logger.warning(
            "trainer stopped renewing its heartbeat; terminating it", extra={"instance_id": instance_id}
        )
        ec2.terminate(instance_id)
    if stopped:
        _count(HEARTBEAT_LOST_METRIC, settings, len(stopped))
    return alive, tuple(stopped)


def _launch(lease: Lease, settings: PipelineSettings) -> str:
    # A token whose launch was never recorded (its holder died before releasing) gives back that
    # launch's instance, which may have ended since; the next token then starts a new one.
    for _ in range(2):
        lease.renew(needed_seconds=ec2.WORST_CASE_CALL_SECONDS)
        token = lease.launch_token()
        try:
            instance_id = ec2.run_from_template(
                settings.trainer_launch_template_id, TRAINER_ROLE, settings.stack_name, client_token=token
            )
        except Exception:
            _count(LAUNCH_FAILED_METRIC, settings)
            raise  # the function fails too; the next scheduled run tries again
        lease.record_launch(instance_id)
        state = ec2.instance_state(instance_id)
        if state is None or state in ec2.LIVE_STATES:
            return instance_id
        logger.warning(
            "launch token already spent on an ended instance; using the next",
            extra={"instance_id": instance_id, "state": state, "client_token": token},
        )
    _count(LAUNCH_FAILED_METRIC, settings)
    raise RuntimeError("EC2 answered two launch tokens with ended instances")


def ensure_trainer(settings: PipelineSettings, wait_seconds: float = 20.0) -> ReconcileOutcome:
    lease = Lease(settings.processed_bucket, LEASE_KEY, settings.reconcile_lease_seconds)
    if not lease.acquire(wait_seconds):
        # Another reconciler is at work; it, or the scheduled run, will see our job.
        logger.info("reconciler lease busy; leaving it to its holder")
        return ReconcileOutcome("lease_busy")
    terminated: tuple[str, ...] = ()
    try:
        alive, terminated = _end_stopped_trainers(settings, time.time())
        if alive:
            return ReconcileOutcome("already_running", alive[0], terminated)
        if sqs.pending_messages(settings.training_queue_url) == 0:
            return ReconcileOutcome("no_work", terminated=terminated)
        if recent := _recent_launch(lease):
            return ReconcileOutcome("already_running", recent, terminated)
        instance_id = _launch(lease, settings)
        logger.info("started a trainer", extra={"instance_id": instance_id})
        return ReconcileOutcome("launched", instance_id, terminated)
    except LeaseLostError as lost:
        # Whoever holds it now sees the same queue and instances, and launches with the same token.
        logger.warning("reconciler lease lost mid-run; leaving it to its holder", extra={"reason": str(lost)})
        return ReconcileOutcome("lease_lost", terminated=terminated)
    finally:
        lease.release()


def request_trainer(settings: PipelineSettings) -> ReconcileOutcome:
    """After a job is queued: have a trainer started within a second. The ingest function may not
    start instances (its role cannot) and need not wait for the lease, so it asks the reconcile
    function to run and returns. Without one (ingest run by hand, the unit tests) it reconciles here."""
    if settings.reconcile_function_name is None:
        return ensure_trainer(settings)
    functions.invoke_async(settings.reconcile_function_name, {"reason": "training queued"})
    return ReconcileOutcome("requested")
