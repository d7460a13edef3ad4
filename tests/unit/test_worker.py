"""The training worker's timing rules, against moto: a held job stays leased while its training runs,
and the quiet period counts from the model's last accepted file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from common.adapters import s3, sqs
from common.settings import WorkerSettings
from worker import main as worker_main
from worker.main import Trainer, VisibilityHeartbeat

OUTPUTS = {
    "IngestQueueUrl": "",
    "TrainingQueueUrl": "",
    "TrainingDeadLetterQueueUrl": "",
    "ProcessedBucketName": "unit-processed",
    "ConfigBucketName": "unit-config",
    "EventBusName": "unit-bus",
    "DvcRemoteUrl": "s3://unit-dvc",
    "ModelsBucketName": "unit-models",
}


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[Any]:
    s3.s3_client.cache_clear()
    sqs.sqs_client.cache_clear()
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="unit-processed")
        client = boto3.client("sqs")
        OUTPUTS["IngestQueueUrl"] = client.create_queue(QueueName="ingest")["QueueUrl"]
        OUTPUTS["TrainingQueueUrl"] = client.create_queue(QueueName="jobs")["QueueUrl"]
        OUTPUTS["TrainingDeadLetterQueueUrl"] = client.create_queue(
            QueueName="jobs-dlq.fifo", Attributes={"FifoQueue": "true"}
        )["QueueUrl"]
        yield client
    s3.s3_client.cache_clear()
    sqs.sqs_client.cache_clear()


def _receivable(client: Any, queue_url: str) -> bool:
    return bool(client.receive_message(QueueUrl=queue_url, VisibilityTimeout=0).get("Messages"))


def test_a_held_job_stays_leased_while_the_heartbeat_runs_and_returns_after(aws: Any) -> None:
    queue_url = aws.create_queue(QueueName="jobs")["QueueUrl"]
    aws.send_message(QueueUrl=queue_url, MessageBody="{}")
    held = aws.receive_message(QueueUrl=queue_url, VisibilityTimeout=1)["Messages"]

    with VisibilityHeartbeat(queue_url, held, seconds=1):
        # Three times the lease: without the heartbeat the job would be back after 1 s.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not _receivable(aws, queue_url)
            time.sleep(0.1)

    deadline = time.monotonic() + 5
    while not _receivable(aws, queue_url):
        assert time.monotonic() < deadline, "the job never came back once its heartbeat stopped"
        time.sleep(0.1)


def _accept(model: str, *accepted_at: float) -> None:
    document = {"model": model, "datasets": [{"accepted_at": moment} for moment in accepted_at]}
    s3.put_bytes("unit-processed", f"{model}/accepted.json", json.dumps(document).encode())


class FakeClock:
    """The worker's clock, where sleeping only moves the hands: a wait is then measured in the
    seconds the worker chose to sleep, the same on a loaded machine as on an idle one."""

    def __init__(self, on_sleep: Callable[[], None] = lambda: None) -> None:
        self.now, self.slept, self.naps, self._on_sleep = 1_800_000_000.0, 0.0, 0, on_sleep

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        self.naps += 1
        # A wait with no end fails here, instead of at the suite's timeout.
        assert self.slept < 3600 and self.naps < 10_000, (
            f"{self.naps} naps, {self.slept} s: a wait with no end"
        )
        self._on_sleep()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(worker_main, "time", fake)
    return fake


@pytest.mark.usefixtures("aws")
def test_the_quiet_period_counts_from_the_last_acceptance(clock: FakeClock) -> None:
    trainer = Trainer(WorkerSettings(quiet_seconds=30), OUTPUTS)
    # The last file came in 40 s ago (the job waited for a boot): no wait left.
    _accept("booted-late", clock.now - 90, clock.now - 40)
    trainer.wait_until_quiet("booted-late")
    assert clock.slept == 0

    # A file accepted just now: the trainer waits the period out, and no longer.
    trainer = Trainer(WorkerSettings(quiet_seconds=0.5), OUTPUTS)
    _accept("fresh", clock.now - 90, clock.now)
    trainer.wait_until_quiet("fresh")
    assert clock.slept == pytest.approx(0.5)


@pytest.mark.usefixtures("aws")
def test_a_clock_ahead_of_the_trainers_never_stretches_the_wait_past_one_period(clock: FakeClock) -> None:
    trainer = Trainer(WorkerSettings(quiet_seconds=0.5), OUTPUTS)
    _accept("skewed", clock.now + 3600)
    trainer.wait_until_quiet("skewed")
    assert clock.slept == pytest.approx(0.5)


def test_files_still_being_ingested_hold_the_quiet_period_until_the_cap(aws: Any, clock: FakeClock) -> None:
    _accept("burst", clock.now - 90)
    aws.send_message(QueueUrl=OUTPUTS["IngestQueueUrl"], MessageBody="{}")  # a file not ingested yet
    trainer = Trainer(WorkerSettings(quiet_seconds=0.1, max_quiet_seconds=1.0), OUTPUTS)

    assert trainer.wait_until_quiet("burst")
    assert clock.slept == pytest.approx(1.0)

    aws.purge_queue(QueueUrl=OUTPUTS["IngestQueueUrl"])
    clock.slept = 0
    assert trainer.wait_until_quiet("burst")
    assert clock.slept == 0
