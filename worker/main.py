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
import os
import signal
import threading
import time
import traceback
from collections import defaultdict
from types import FrameType
from typing import Annotated, Any

import typer

from common.adapters import ec2, events, instance, s3, sqs
from common.adapters.stack import StackResources, stack_outputs
from common.layout import accepted_list_key
from common.settings import WorkerSettings, get_worker_settings
from worker.stage_server import StageServer, stage_server

# worker.train_model (MLflow, DVC, pandas: ~4 s of imports) loads with the first job, after the stage
# server has started: on a cold instance the two import side by side.

LOG = logging.getLogger("arrival.worker")
# When this process started: with the instance's launch time, it gives the boot time in benchmarks.
WORKER_STARTED_AT = time.time()
app = typer.Typer(add_completion=False, help=__doc__)


class VisibilityHeartbeat:
    """Keeps jobs leased while a long training runs, so no other trainer takes them meanwhile."""

    def __init__(self, queue_url: str, messages: list[dict[str, Any]], seconds: int) -> None:
        self.queue_url, self.messages, self.seconds = queue_url, messages, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            for message in self.messages:
                sqs.extend_visibility(self.queue_url, message["ReceiptHandle"], self.seconds)

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class DataListWatch:
    """The worker's side of a speculative training (worker.train_model.Speculation). While the
    training runs, a thread watches the accepted list: a change ends the running stages at once, as
    the training no longer counts. Once the pipeline is done, `settle` waits out what is left of the
    quiet period."""

    def __init__(self, trainer: Trainer, model: str) -> None:
        self.trainer, self.model = trainer, model
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
        return not self._changed.is_set() and self.trainer.wait_until_quiet(self.model, self.etag)

    def _halt(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> DataListWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt()


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

    def wait_until_quiet(self, model: str, expected_etag: str | None = None) -> bool:
        """Until the model's accepted list has been still for the quiet period. Each new file changes
        it, and its entry records when (`accepted_at`, stamped by the ingest function), so the time a
        job spent in the queue or waiting for its trainer to boot counts toward the period. While the
        stack's ingest queue still holds files (a burst's later files can wait seconds for an ingest
        environment), the period is not over, up to `max_quiet_seconds`. False, at once, if the list
        is no longer the one with `expected_etag`."""
        key, quiet = accepted_list_key(model), self.settings.quiet_seconds
        etag, watched_since = None, time.monotonic()
        give_up_on_ingest = time.monotonic() + self.settings.max_quiet_seconds
        while True:
            found = s3.get_bytes(self.resources.processed_bucket, key)
            if found is None:
                return expected_etag is None  # nothing accepted: the training says so, with the name
            if expected_etag is not None and found[1].strip('"') != expected_etag:
                return False
            if found[1] != etag:
                etag, watched_since = found[1], time.monotonic()
            datasets = json.loads(found[0])["datasets"]
            last_change = max((entry["accepted_at"] for entry in datasets), default=0.0)
            # Still for the period by the ingest function's clock, or as watched here: a clock ahead
            # of this one must not stretch the wait.
            remaining = min(last_change + quiet - time.time(), watched_since + quiet - time.monotonic())
            if remaining <= 0:
                ingesting = time.monotonic() < give_up_on_ingest and sqs.pending_messages(
                    self.ingest_queue_url
                )
                if not ingesting:
                    return True
                remaining = 0.2
            time.sleep(min(0.2, remaining))

    def abort_stages(self) -> None:
        if self.stages is not None and (ended := self.stages.abort_stages()):
            LOG.info("ended %d running stage(s)", ended)

    def handle(self, model: str, messages: list[dict[str, Any]]) -> None:
        """Train on the model's list. The first attempt starts at once and the quiet period runs
        alongside it (see DataListWatch); if the list changes under it, a burst is under way: the
        attempt is dropped, and the next one waits for the quiet period first and always counts."""
        from worker.train_model import train_model

        with VisibilityHeartbeat(self.queue_url, messages, self.settings.visibility_seconds):
            try:
                received_at = time.time()
                outcome, speculative = None, True
                while outcome is None:
                    if not speculative:
                        LOG.info("the accepted list of %s changed during training; waiting for quiet", model)
                        self.wait_until_quiet(model)
                    moments = {
                        "timing.worker_started_at": WORKER_STARTED_AT,
                        "timing.job_received_at": received_at,
                    }
                    with DataListWatch(self, model) as watch:
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
                self.failed(model, messages, error)
                return
        LOG.info("trained %s: %s", model, outcome)
        for message in messages:
            sqs.delete(self.queue_url, message["ReceiptHandle"])

    def failed(self, model: str, messages: list[dict[str, Any]], error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        for message in messages:
            attempts = int(message["Attributes"].get("ApproximateReceiveCount", "1"))
            if attempts < self.settings.max_attempts:
                # Back off before the retry: a transient cause (a busy endpoint) gets time to pass.
                sqs.extend_visibility(self.queue_url, message["ReceiptHandle"], min(2**attempts, 60))
                continue
            sqs.send_fifo_with_reason(
                self.dead_letter_url,
                message["Body"],
                group_id=model,
                deduplication_id=message["MessageId"],
                reason=reason,
            )
            sqs.delete(self.queue_url, message["ReceiptHandle"])
            events.publish(
                self.resources.event_bus_name,
                "TrainingFailed",
                {
                    "name": model,
                    "attempts": attempts,
                    "failure_reason": reason,
                    "trace": traceback.format_exc()[-2000:],
                },
            )
            LOG.error(
                "job for %s moved to the dead-letter queue after %d attempts: %s", model, attempts, reason
            )

    def receive(self, wait_seconds: int) -> dict[str, list[dict[str, Any]]]:
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.held = sqs.receive(
            self.queue_url, wait_seconds=wait_seconds, visibility_seconds=self.settings.visibility_seconds
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
            jobs = self.receive(self.settings.poll_seconds)
            if not jobs and time.monotonic() - last_work >= self.settings.idle_seconds:
                jobs = self.receive(1)  # one last look before the instance goes away
                if not jobs:
                    return
            for model, messages in jobs.items():
                self.handle(model, messages)
            self.held = []  # each was deleted, handed back for a retry, or dead-lettered
            if jobs:
                last_work = time.monotonic()


@app.command()
def main(
    role: Annotated[str, typer.Option(help="what this instance is for")] = "trainer",
    stack: Annotated[str, typer.Option(envvar="ARRIVAL_STACK_NAME", help="the deployed stack")] = "arrival",
) -> None:
    """Run the worker until it has been idle for ARRIVAL_WORKER_IDLE_SECONDS, then terminate the instance."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if role != "trainer":
        raise typer.BadParameter(f"unknown role {role!r}; this worker knows 'trainer'")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # Without it MLflow would log to a local directory that dies with the instance.
        raise typer.BadParameter(
            "MLFLOW_TRACKING_URI is not set: deploy the stack with MlflowTrackingUri (arrival deploy "
            "passes your MLFLOW_TRACKING_URI)"
        )
    with stage_server() as stages:
        trainer = Trainer(get_worker_settings(), stack_outputs(stack), stages)
        signal.signal(signal.SIGTERM, trainer.release_held)
        trainer.run()
    instance_id = instance.own_instance_id()
    if instance_id:
        LOG.info("idle: terminating instance %s", instance_id)
        ec2.terminate(instance_id)


if __name__ == "__main__":
    app()
