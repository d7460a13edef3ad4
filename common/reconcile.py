"""Making sure trainers run whenever training work is queued: one for each model waiting that no
trainer is free to take, up to the stack's MaxTrainers.

Runs after every enqueue and on a schedule. Concurrent runs serialise on a lease kept in S3 with
conditional writes, so ten simultaneous ingests start the trainers the queue needs once, not ten times
over. A trainer counts as running only while it renews its heartbeat; one that stopped is terminated
and replaced. The heartbeat also says which model a trainer is training: a trainer that trains none (or
has not beaten yet: it is booting) will take the next waiting job, so it counts against the waiting
models.

The training queue is FIFO, grouped by model, and SQS counts waiting jobs, not the groups they are in:
ten files for one model queue ten jobs that one trainer works through in order. So whoever queues a
job first marks its model (common/layout.py `queued_training_key`), and the trainer that takes up one
of the model's jobs clears the mark: the reconciler starts a trainer for each marked model that no
trainer is training, and for none of the jobs waiting behind a model in training.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from common.adapters import ec2, functions, s3, sqs
from common.layout import QUEUED_TRAINING_PREFIX, queued_training_key, trainer_heartbeat_key
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
    instance_id: str | None = None  # the first trainer launched, or one already running
    terminated: tuple[str, ...] = ()
    launched: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveTrainer:
    instance_id: str
    model: str | None  # what its heartbeat says it trains; None: nothing now, or no heartbeat yet


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
        now = time.time()
        launch = {"instance_id": instance_id, "at": now, "token": self.launch_token()}
        recent = [
            earlier
            for earlier in self.document.get("recent_launches", [])
            if now - earlier.get("at", 0) < LAUNCH_GRACE_SECONDS
        ]
        self.document = {
            **self.document,
            "launches": self.document["launches"] + 1,
            "recent_launches": [*recent, launch],
        }

    def release(self) -> None:
        document = {**self.document, "holder": None, "expires_at": 0}
        try:
            s3.put_json_if(self.bucket, self.key, document, etag=self._etag)
        except s3.PreconditionFailedError:
            logger.warning("reconciler lease was taken over before release; it had expired")


def _unlisted_launches(lease: Lease, listed: set[str]) -> list[str]:
    """Trainers launched moments ago that DescribeInstances may simply not list yet."""
    unlisted = []
    for launch in lease.document.get("recent_launches", []):
        instance_id = str(launch["instance_id"])
        if instance_id in listed or time.time() - launch.get("at", 0) >= LAUNCH_GRACE_SECONDS:
            continue
        state = ec2.instance_state(instance_id)
        if state is None or state in ec2.LIVE_STATES:
            unlisted.append(instance_id)
    return unlisted


def _count(metric_name: str, settings: PipelineSettings, value: int = 1) -> None:
    """One datapoint now, by stack: two stacks in one account alarm on their own trainers only."""
    with single_metric(name=metric_name, unit=MetricUnit.Count, value=value) as metric:
        metric.add_dimension(name="stack", value=settings.stack_name)


@dataclass(frozen=True)
class Heartbeat:
    renewed_at: float
    model: str | None  # the model the trainer trains now


def read_heartbeat(bucket: str, instance_id: str) -> Heartbeat | None:
    """A trainer's last heartbeat (worker/main.py writes it), or None if it has none readable."""
    found = s3.get_bytes(bucket, trainer_heartbeat_key(instance_id))
    if found is None:
        return None
    try:
        document = json.loads(found[0])
        model = document.get("model")
        return Heartbeat(float(document["renewed_at"]), str(model) if model else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("unreadable trainer heartbeat; taken as none", extra={"instance_id": instance_id})
        return None


def _is_alive(
    settings: PipelineSettings, instance: ec2.Instance, heartbeat: Heartbeat | None, now: float
) -> bool:
    if heartbeat is None:
        return now - instance.launched_at < settings.trainer_boot_grace_seconds
    return now - heartbeat.renewed_at <= settings.trainer_heartbeat_stale_seconds


def _end_stopped_trainers(
    settings: PipelineSettings, now: float
) -> tuple[list[LiveTrainer], tuple[str, ...]]:
    """The stack's trainers that are alive; those whose heartbeat stopped are terminated."""
    alive: list[LiveTrainer] = []
    stopped: list[str] = []
    for instance in ec2.live_instances_launched(TRAINER_ROLE, settings.stack_name):
        heartbeat = read_heartbeat(settings.processed_bucket, instance.instance_id)
        if _is_alive(settings, instance, heartbeat, now):
            alive.append(LiveTrainer(instance.instance_id, heartbeat.model if heartbeat else None))
        else:
            stopped.append(instance.instance_id)
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


def queue_training(bucket: str, queue_url: str, model: str, deduplication_id: str) -> str:
    """Queue a training of the model, marked first for the reconciler (the module's docstring): a job
    can then never be taken up before its mark exists, which would leave the mark behind."""
    s3.put_json(bucket, queued_training_key(model), {"model": model, "queued_at": time.time()})
    return sqs.send_fifo(queue_url, {"model": model}, group_id=model, deduplication_id=deduplication_id)


def taken_up(bucket: str, model: str) -> None:
    """A trainer took up one of the model's jobs: its later ones wait for it, not for a new trainer."""
    s3.delete(bucket, queued_training_key(model))


def _marked_models(bucket: str) -> set[str]:
    return {
        key.removeprefix(QUEUED_TRAINING_PREFIX).removesuffix(".json")
        for key, _ in s3.list_objects(bucket, QUEUED_TRAINING_PREFIX)
    }


def trainers_to_launch(
    max_trainers: int, live: list[LiveTrainer], unlisted: int, waiting_models: int, pending: int
) -> int:
    """How many trainers to start: one for each model waiting for a trainer that no free trainer will
    take (a trainer that trains nothing now, or is still booting), up to `max_trainers` running. With
    none running, one for any job at all: a job in flight belongs to a trainer that died, and comes
    back to the queue; a job queued without a mark (a redriven one) is work too."""
    running = len(live) + unlisted
    free = sum(1 for trainer in live if trainer.model is None) + unlisted
    wanted = min(max_trainers - running, waiting_models - free)
    if running == 0 and pending > 0:
        wanted = max(wanted, 1)
    return max(0, wanted)


def ensure_trainers(settings: PipelineSettings, wait_seconds: float = 20.0) -> ReconcileOutcome:
    lease = Lease(settings.processed_bucket, LEASE_KEY, settings.reconcile_lease_seconds)
    if not lease.acquire(wait_seconds):
        # Another reconciler is at work; it, or the scheduled run, will see our job.
        logger.info("reconciler lease busy; leaving it to its holder")
        return ReconcileOutcome("lease_busy")
    terminated: tuple[str, ...] = ()
    try:
        live, terminated = _end_stopped_trainers(settings, time.time())
        unlisted = _unlisted_launches(lease, {trainer.instance_id for trainer in live})
        running = [trainer.instance_id for trainer in live] + unlisted
        pending = sqs.pending_messages(settings.training_queue_url)
        busy = {trainer.model for trainer in live if trainer.model}
        # A mark left by a queueing that failed after it (its job never sent) counts only while
        # other work keeps the queue from being empty.
        waiting_models = len(_marked_models(settings.processed_bucket) - busy) if pending else 0
        count = trainers_to_launch(settings.max_trainers, live, len(unlisted), waiting_models, pending)
        if count == 0:
            if running:
                return ReconcileOutcome("already_running", running[0], terminated)
            return ReconcileOutcome("no_work", terminated=terminated)
        launched = []
        for _ in range(count):
            launched.append(_launch(lease, settings))
            logger.info(
                "started a trainer", extra={"instance_id": launched[-1], "waiting_models": waiting_models}
            )
        return ReconcileOutcome("launched", launched[0], terminated, tuple(launched))
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
        return ensure_trainers(settings)
    functions.invoke_async(settings.reconcile_function_name, {"reason": "training queued"})
    return ReconcileOutcome("requested")
