"""`arrival-worker`: the training worker an EC2 instance's user data starts.

It long-polls the training queue. A job names only a model; after the model's accepted-data list
has been still for a quiet period, it trains once on the whole list and acknowledges every job that
training covered, so a burst of uploads gives one model version. Failing jobs are retried, then moved
to the dead-letter queue with their reason. Idle for long enough, it terminates its own instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any

import typer

from common.adapters import ec2, events, instance, s3, secrets, sqs
from common.adapters.stack import StackResources, stack_outputs, stack_parameter
from common.layout import accepted_list_key, trainer_heartbeat_key
from common.reconcile import taken_up
from common.settings import WorkerSettings, get_worker_settings
from common.tracking_login import login_from_environment, login_from_secret
from worker.stage_server import StageServer, stage_server

# worker.train_model (MLflow, DVC, pandas: ~4 s of imports) loads with the first job, after the stage
# server has started: on a cold instance the two import side by side.

LOG = logging.getLogger("arrival.worker")
# When this process started: with the instance's launch time, it gives the boot time in benchmarks.
WORKER_STARTED_AT = time.time()
app = typer.Typer(add_completion=False, help=__doc__)


class VisibilityHeartbeat:
    """Keeps every job of a received batch leased while the worker is busy with it, so no other
    trainer takes them meanwhile: the job being trained and the other models' jobs waiting their
    turn. A job is `forget`-ed once it is deleted or handed back for a retry."""

    def __init__(self, queue_url: str, messages: list[dict[str, Any]], seconds: int) -> None:
        self.queue_url, self.seconds = queue_url, seconds
        self._leased = {message["ReceiptHandle"] for message in messages}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def forget(self, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            self._leased -= {message["ReceiptHandle"] for message in messages}

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            with self._lock:
                handles = sorted(self._leased)
            for handle in handles:
                # One failed extension (a throttled or unreachable endpoint) must not end the
                # heartbeat: the lease has two more beats before it lapses.
                try:
                    sqs.extend_visibility(self.queue_url, handle, self.seconds)
                except Exception:
                    LOG.warning("could not extend a job's lease; trying again next beat", exc_info=True)

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TrainerHeartbeat:
    """Tells the reconciler this trainer is alive (common.reconcile): an instance whose heartbeat went
    stale is terminated and replaced, so a trainer stuck on AWS cannot hold up training for good."""

    def __init__(self, bucket: str, instance_id: str, seconds: float) -> None:
        self.bucket, self.instance_id, self.seconds = bucket, instance_id, seconds
        self._model: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    @property
    def model(self) -> str | None:
        return self._model

    @model.setter
    def model(self, model: str | None) -> None:
        """The model this trainer trains now (None: none). Beaten at once: the reconciler counts a
        trainer that trains nothing as free to take the next job, and starts trainers for the rest."""
        self._model = model
        self._wake.set()

    def _renew(self) -> None:
        document = {"instance_id": self.instance_id, "renewed_at": time.time(), "model": self._model}
        s3.put_json(self.bucket, trainer_heartbeat_key(self.instance_id), document)

    def _beat(self) -> None:
        while True:
            self._wake.clear()  # before renewing: a change made during the renewal beats again
            try:
                self._renew()
            except Exception:  # transient: the next beat renews it, long before it counts as stale
                LOG.warning("could not renew the trainer heartbeat", exc_info=True)
            # Stopping sets _stop, then _wake: a wake cleared above came after _stop was set.
            if self._stop.is_set() or (self._wake.wait(self.seconds) and self._stop.is_set()):
                return

    def __enter__(self) -> TrainerHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # the instance is going away; a stale object is harmless
            s3.delete(self.bucket, trainer_heartbeat_key(self.instance_id))


class DataListWatch:
    """The worker's side of a speculative training (worker.train_model.Speculation). While the
    training runs, a thread watches the accepted list: a change ends the running stages at once, as
    the training no longer counts. Once the pipeline is done, `settle` waits out what is left of the
    quiet period."""

    def __init__(self, trainer: Trainer, model: str, deadline: float) -> None:
        self.trainer, self.model, self.deadline = trainer, model, deadline
        self.etag = ""
        self._changed, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def started(self, etag: str) -> None:
        self.etag = etag.strip('"')
        self._thread.start()

    def _watch(self) -> None:
        bucket, key = self.trainer.resources.processed_bucket, accepted_list_key(self.model)
        while not self._stop.wait(0.25):
            if self._changed.is_set():
                # Keep ending stages until the training gives up: DVC may start the next stage
                # before it notices that the last one failed.
                self.trainer.abort_stages()
                continue
            try:
                current = s3.head_object(bucket, key).etag
            except Exception:  # a missed look costs nothing: settle() reads the list again
                LOG.debug("could not look at %s", key, exc_info=True)
                continue
            if current != self.etag:
                self._changed.set()
                self.trainer.abort_stages()

    def superseded(self) -> bool:
        return self._changed.is_set()

    def settle(self) -> bool:
        self._halt()
        return not self._changed.is_set() and self.trainer.wait_until_quiet(
            self.model, self.etag, self.deadline
        )

    def _halt(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> DataListWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt()


def use_tracking_login(settings: WorkerSettings) -> None:
    """Log in to the tracking server as the stack's secret says, read again for each job so a
    rotated password is picked up by the next. MLflow's client reads the variables on every request,
    and the DVC stages a training starts inherit them. Without a secret the trainer goes with what
    its environment has, or anonymously: a server that requires a login then refuses every request
    (401), and the job dead-letters saying so."""
    if settings.mlflow_login_secret:
        secret_id = settings.mlflow_login_secret
        os.environ.update(login_from_secret(secret_id, secrets.secret_json(secret_id)).environment())
    elif login_from_environment(dict(os.environ)) is None:
        LOG.warning(
            "no MLflow login: ARRIVAL_WORKER_MLFLOW_LOGIN_SECRET is not set (the stack's "
            "MlflowLoginSecretArn); calling the tracking server anonymously"
        )


class Trainer:
    def __init__(
        self, settings: WorkerSettings, outputs: dict[str, str], stages: StageServer | None = None
    ) -> None:
        self.settings, self.stages = settings, stages
        self.queue_url = outputs["TrainingQueueUrl"]
        self.dead_letter_url = outputs["TrainingDeadLetterQueueUrl"]
        self.ingest_queue_url = outputs["IngestQueueUrl"]
        self.resources = StackResources.from_outputs(outputs)
        self.held: list[dict[str, Any]] = []
        self.heartbeat: TrainerHeartbeat | None = None
        # The release the stack names now (its ReleaseVersion); None where there is no stack to ask.
        self.stack_release: Callable[[], str | None] = lambda: None
        self._release_checked_at = -math.inf

    def wait_until_quiet(
        self, model: str, expected_etag: str | None = None, deadline: float | None = None
    ) -> bool:
        """Until the model's accepted list has been still for the quiet period. Each new file changes
        it, and its entry records when (`accepted_at`, stamped by the ingest function), so the time a
        job spent in the queue or waiting for its trainer to boot counts toward the period. While the
        stack's ingest queue still holds files (a burst's later files can wait seconds for an ingest
        environment), the period is not over. The whole wait ends at `deadline` (time.monotonic();
        by default `max_quiet_seconds` from now), quiet or not: a steady stream of uploads must not
        starve training. False, at once, if the list is no longer the one with `expected_etag`."""
        key, quiet = accepted_list_key(model), self.settings.quiet_seconds
        etag, watched_since = None, time.monotonic()
        if deadline is None:
            deadline = time.monotonic() + self.settings.max_quiet_seconds
        while True:
            found = s3.get_bytes(self.resources.processed_bucket, key)
            if found is None:
                return expected_etag is None  # nothing accepted: the training says so, with the name
            if expected_etag is not None and found[1].strip('"') != expected_etag:
                return False
            if time.monotonic() >= deadline:
                LOG.info("%s is still receiving files; training on what it has after the longest wait", model)
                return True
            if found[1] != etag:
                etag, watched_since = found[1], time.monotonic()
            datasets = json.loads(found[0])["datasets"]
            last_change = max((entry["accepted_at"] for entry in datasets), default=0.0)
            # Still for the period by the ingest function's clock, or as watched here: a clock ahead
            # of this one must not stretch the wait.
            remaining = min(last_change + quiet - time.time(), watched_since + quiet - time.monotonic())
            if remaining <= 0:
                if not sqs.pending_messages(self.ingest_queue_url):
                    return True
                remaining = 0.2
            time.sleep(min(0.2, remaining, max(0.0, deadline - time.monotonic())))

    def abort_stages(self) -> None:
        if self.stages is not None and (ended := self.stages.abort_stages()):
            LOG.info("ended %d running stage(s)", ended)

    def handle(self, model: str, messages: list[dict[str, Any]], lease: VisibilityHeartbeat) -> None:
        """Train on the model's list. The first attempt starts at once and the quiet period runs
        alongside it (see DataListWatch); if the list changes under it, a burst is under way: the
        attempt is dropped, and the next one waits for the quiet period first and always counts.
        Waiting ends `max_quiet_seconds` after the job arrived, quiet or not."""
        from worker.train_model import train_model

        received_at = time.time()
        deadline = self.wait_deadline(messages)
        if self.heartbeat is not None:
            self.heartbeat.model = model
        try:
            taken_up(self.resources.processed_bucket, model)
        except Exception:  # the mark only spares the reconciler a trainer: the job matters more
            LOG.warning("could not clear %s's queued mark: a trainer too many may start", model)
        try:
            use_tracking_login(self.settings)
            outcome, speculative = None, True
            while outcome is None:
                if not speculative:
                    LOG.info("the accepted list of %s changed during training; waiting for quiet", model)
                    self.wait_until_quiet(model, deadline=deadline)
                moments = {
                    "timing.worker_started_at": WORKER_STARTED_AT,
                    "timing.job_received_at": received_at,
                }
                with DataListWatch(self, model, deadline) as watch:
                    outcome = train_model(
                        model,
                        self.resources,
                        self.settings.workspace_root,
                        moments,
                        speculation=watch if speculative else None,
                    )
                speculative = False
        except Exception as error:
            LOG.exception("training %s failed", model)
            lease.forget(messages)
            self.failed(model, messages, error)
            return
        finally:
            if self.heartbeat is not None:
                self.heartbeat.model = None
        LOG.info("trained %s: %s", model, outcome)
        lease.forget(messages)
        for message in messages:
            sqs.delete(self.queue_url, message["ReceiptHandle"])

    def wait_deadline(self, messages: list[dict[str, Any]]) -> float:
        """When waiting for quiet ends (time.monotonic()): `max_quiet_seconds` after the oldest job
        was sent, so time it spent queued (behind another model's training, or a trainer's boot)
        counts; but never before one quiet period from now, so a burst still has a chance to settle."""
        now_wall, now = time.time(), time.monotonic()
        sent = min(
            (
                float(message["Attributes"]["SentTimestamp"]) / 1000
                for message in messages
                if "SentTimestamp" in message.get("Attributes", {})
            ),
            default=now_wall,
        )
        until = sent + self.settings.max_quiet_seconds - now_wall
        return now + max(until, self.settings.quiet_seconds)

    def retry_delay(self, attempts: int) -> int:
        """Seconds before a failed job is tried again: minutes, not seconds, so that a tracking
        server being restarted or an endpoint being throttled has passed by the next try."""
        return int(min(self.settings.retry_backoff_seconds * 2 ** (attempts - 1), 43_200))  # SQS's maximum

    def failed(self, model: str, messages: list[dict[str, Any]], error: Exception) -> None:
        """Hand each job back for a later retry, or dead-letter it with its reason after the last try,
        or at once when retrying cannot help (the recipe's own code raised).
        Nothing here may kill the worker: a job whose handling fails comes back when its lease lapses."""
        from common.adapters.tracking import refused_login

        reason = f"{type(error).__name__}: {error}"
        if refused_login(error):
            reason = (
                "the tracking server refused the trainer's login (401): check the stack's "
                f"MlflowLoginSecretArn (ARRIVAL_WORKER_MLFLOW_LOGIN_SECRET). {reason}"
            )
        trace = "".join(traceback.format_exception(error))[-2000:]
        # A recipe's own code failing (worker/recipes.py) fails the same way on every retry.
        deterministic = bool(getattr(error, "deterministic", False))
        for message in messages:
            attempts = int(message["Attributes"].get("ApproximateReceiveCount", "1"))
            try:
                if attempts < self.settings.max_attempts and not deterministic:
                    sqs.extend_visibility(
                        self.queue_url, message["ReceiptHandle"], self.retry_delay(attempts)
                    )
                else:
                    self.dead_letter(model, message, attempts, reason, trace)
            except Exception:
                LOG.exception("could not hand the job for %s back; it returns when its lease lapses", model)

    def dead_letter(
        self, model: str, message: dict[str, Any], attempts: int, reason: str, trace: str
    ) -> None:
        # The event goes out before the job leaves the queue: if publishing fails, the job is still
        # there, comes back, and both are tried again. The other order could lose the event for good.
        events.publish(
            self.resources.event_bus_name,
            "TrainingFailed",
            {"name": model, "attempts": attempts, "failure_reason": reason, "trace": trace},
        )
        sqs.send_fifo_with_reason(
            self.dead_letter_url,
            message["Body"],
            group_id=model,
            deduplication_id=message["MessageId"],
            reason=reason,
        )
        sqs.delete(self.queue_url, message["ReceiptHandle"])
        LOG.error("job for %s moved to the dead-letter queue after %d attempts: %s", model, attempts, reason)

    def receive(self, wait_seconds: int) -> dict[str, list[dict[str, Any]]]:
        """One job at a time, so one model at a time: SQS fills a larger receive with other models'
        jobs, which this trainer would then hold while other trainers stand idle; handing them back
        would count as receives against the queue's redrive limit. A model's later jobs wait in its
        FIFO group meanwhile, and once its training has covered their list they finish at once."""
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.held = sqs.receive(
            self.queue_url,
            wait_seconds=wait_seconds,
            visibility_seconds=self.settings.visibility_seconds,
            max_messages=1,
        )
        for message in self.held:
            by_model[json.loads(message["Body"])["model"]].append(message)
        return by_model

    def release_held(self, signum: int, frame: FrameType | None) -> None:
        """On SIGTERM (the instance is being stopped): hand unfinished jobs back at once, instead of
        leaving them invisible until their lease runs out."""
        for message in self.held:
            with contextlib.suppress(Exception):  # the message may be gone already; exiting matters
                sqs.extend_visibility(self.queue_url, message["ReceiptHandle"], 0)
        raise SystemExit(128 + signum)

    def run(self) -> None:
        last_work = time.monotonic()
        while True:
            # Before taking a job too, now and then: a trainer left idle by the release would
            # otherwise train the next job on the old code.
            due = time.monotonic() - self._release_checked_at >= self.settings.release_check_seconds
            if due and self.superseded_by_a_release():
                return
            jobs = self.receive(self.settings.poll_seconds)
            if not jobs and time.monotonic() - last_work >= self.settings.idle_seconds:
                jobs = self.receive(1)  # one last look before the instance goes away
                if not jobs:
                    return
            with VisibilityHeartbeat(self.queue_url, self.held, self.settings.visibility_seconds) as lease:
                for model, messages in jobs.items():
                    self.handle(model, messages, lease)
            self.held = []  # each was deleted, handed back for a retry, or dead-lettered
            if jobs:
                last_work = time.monotonic()
                if self.superseded_by_a_release():
                    return

    def superseded_by_a_release(self) -> str | None:
        """The stack's release, if it is no longer this worker's: the trainer then ends with the jobs
        it holds done, before it takes another, and the reconciler starts one from the new release
        (the launch template's latest) for the jobs still queued."""
        own = self.settings.release_version
        self._release_checked_at = time.monotonic()
        try:
            current = self.stack_release() if own else None
        except Exception:  # throttled, or the stack unreadable for a moment: look again later
            LOG.exception("could not read the stack's release")
            return None
        if current is None or current == own:
            return None
        LOG.info("the stack now runs release %s: this trainer (release %s) ends after its jobs", current, own)
        return current


def _serve(role: str, stack: str, instance_id: str | None) -> None:
    if role != "trainer":
        raise typer.BadParameter(f"unknown role {role!r}; this worker knows 'trainer'")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # Without it MLflow would log to a local directory that dies with the instance.
        raise typer.BadParameter(
            "MLFLOW_TRACKING_URI is not set: deploy the stack with MlflowTrackingUri (arrival deploy "
            "passes your MLFLOW_TRACKING_URI)"
        )
    settings = get_worker_settings()
    with stage_server() as stages:
        trainer = Trainer(settings, stack_outputs(stack), stages)
        trainer.stack_release = lambda: stack_parameter(stack, "ReleaseVersion")
        signal.signal(signal.SIGTERM, trainer.release_held)
        if instance_id is None:  # a developer running the worker by hand: no instance to vouch for
            trainer.run()
            return
        heartbeat = TrainerHeartbeat(
            trainer.resources.processed_bucket, instance_id, settings.heartbeat_seconds
        )
        with heartbeat:
            trainer.heartbeat = heartbeat
            trainer.run()


@app.command()
def main(
    role: Annotated[str, typer.Option(help="what this instance is for")] = "trainer",
    stack: Annotated[str, typer.Option(envvar="ARRIVAL_STACK_NAME", help="the deployed stack")] = "arrival",
) -> None:
    """Run the worker until it has been idle for ARRIVAL_WORKER_IDLE_SECONDS, then terminate the instance."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    instance_id = instance.own_instance_id()
    if instance_id:
        LOG.info("running on instance %s: beating its heartbeat, and ending it when idle", instance_id)
    else:
        LOG.warning("no instance metadata answered: no heartbeat, and no instance to end when idle")
    try:
        _serve(role, stack, instance_id)
    except BaseException:
        LOG.exception("the worker stopped on an error")
        raise
    finally:
        # On every way out, or the instance idles on: on AWS nothing else would end it before the
        # reconciler finds its heartbeat stale.
        if instance_id:
            LOG.info("terminating instance %s", instance_id)
            ec2.terminate(instance_id)


if __name__ == "__main__":
    app()
