"""The trainer's failure paths (reliability issue, holes 1, 2, 4, 5 and 9): each test here failed
against the worker as it was before its fix."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, cast

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from common.adapters import ec2, events, instance, s3, sqs, tracking
from common.contracts import parse_contract
from common.settings import WorkerSettings
from tests.fake_lifecycle import Registry
from tests.unit.test_worker import OUTPUTS, FakeClock
from tests.unit.test_worker import aws as aws  # the fixture: moto with the stack's queues
from worker import decision, main, train_model
from worker.main import Trainer, TrainerHeartbeat, VisibilityHeartbeat
from worker.recipes import RecipeError
from worker.workspace import StageFailedError

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _visible(client: Any, queue_url: str) -> list[dict[str, Any]]:
    return list(client.receive_message(QueueUrl=queue_url, VisibilityTimeout=0).get("Messages", []))


# Hole 1: a steady stream of uploads must not starve training.


@pytest.mark.usefixtures("aws")
def test_a_steady_stream_of_uploads_cannot_hold_training_past_the_longest_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a file accepted every time the trainer sleeps: the list is never still for the period
    moments: list[float] = []

    def upload() -> None:
        moments.append(clock.now)
        document = {"model": "stream", "datasets": [{"accepted_at": at} for at in moments]}
        s3.put_bytes("unit-processed", "stream/accepted.json", json.dumps(document).encode())

    clock = FakeClock(on_sleep=upload)
    monkeypatch.setattr(main, "time", clock)
    upload()
    trainer = Trainer(WorkerSettings(quiet_seconds=0.5, max_quiet_seconds=1.5), OUTPUTS)

    # WHEN it waits for quiet THEN it stops waiting at the cap, quiet or not
    assert trainer.wait_until_quiet("stream")
    assert clock.slept == pytest.approx(1.5)
    assert len(moments) > 5  # the list did keep changing while it waited


# Hole 5: heartbeats survive transient errors; other models' jobs stay leased; the instance ends.


def test_the_visibility_heartbeat_survives_failing_calls(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A queue of its own: in the full suite this test saw its renewed job come back on the shared
    # "jobs" queue at the first lease's end (3 runs in 6, never alone), so nothing else may touch it.
    queue_url = aws.create_queue(QueueName=f"heartbeat-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    aws.send_message(QueueUrl=queue_url, MessageBody="{}")
    held = aws.receive_message(QueueUrl=queue_url, VisibilityTimeout=6)["Messages"]
    real_extend, calls = sqs.extend_visibility, []

    # A beat every 2 s on a 6 s lease: the first fails, the next renews the lease 2 s before it lapses.
    # (With 2/3 s or 1 s to spare, the suite's load once held the renewing call past the lease's end.)
    def flaky(queue: str, handle: str, seconds: int) -> None:
        calls.append(seconds)
        if len(calls) <= 1:
            raise ConnectionError("throttled")
        real_extend(queue, handle, seconds)

    monkeypatch.setattr(sqs, "extend_visibility", flaky)
    with VisibilityHeartbeat(queue_url, held, seconds=6):
        # Four beats take 8 s, past the first lease's end; the margin is for a loaded machine.
        deadline = time.monotonic() + 30
        while len(calls) < 4:
            assert time.monotonic() < deadline, f"the heartbeat stopped after {len(calls)} beats"
            # The job stays leased all along: the beats after the failed ones renewed it in time.
            assert _visible(aws, queue_url) == [], f"the job was back after {len(calls)} beats"
            time.sleep(0.2)


def test_a_trainer_holds_one_models_job_and_leaves_the_others_to_other_trainers(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = OUTPUTS["TrainingQueueUrl"]
    for model in ("first", "second"):
        aws.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"model": model}))
    # Validation would refuse a 1 s lease; the test needs one to stay short.
    settings = WorkerSettings.model_construct(
        **{**WorkerSettings().model_dump(), "visibility_seconds": 1, "idle_seconds": 0, "poll_seconds": 0}
    )
    trainer = Trainer(settings, OUTPUTS)
    seen_while_training: list[list[str]] = []
    handled: list[str] = []

    def slow_handle(model: str, messages: list[dict[str, Any]], lease: VisibilityHeartbeat) -> None:
        handled.append(model)
        if model == "first":
            deadline = time.monotonic() + 2.5  # more than twice the lease
            while time.monotonic() < deadline:
                visible = aws.receive_message(QueueUrl=queue_url, VisibilityTimeout=0, MaxNumberOfMessages=10)
                seen_while_training.append(
                    [json.loads(m["Body"])["model"] for m in visible.get("Messages", [])]
                )
                time.sleep(0.1)
        lease.forget(messages)
        for message in messages:
            sqs.delete(queue_url, message["ReceiptHandle"])

    monkeypatch.setattr(trainer, "handle", slow_handle)
    trainer.run()
    # The job in training stays leased past its 1 s lease; the other model's waits for any trainer.
    assert seen_while_training and all(visible == ["second"] for visible in seen_while_training)
    assert handled == ["first", "second"]


def test_the_worker_terminates_its_instance_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    terminated: list[str] = []
    monkeypatch.setattr(instance, "own_instance_id", lambda: "i-0123")  # the module main calls
    monkeypatch.setattr(ec2, "terminate", terminated.append)

    def broken(role: str, stack: str, instance_id: str | None) -> None:
        raise RuntimeError("the stack has no outputs")

    monkeypatch.setattr(main, "_serve", broken)
    with pytest.raises(RuntimeError):
        main.main(role="trainer", stack="gone")
    assert terminated == ["i-0123"]


def test_the_trainer_heartbeat_is_renewed_through_errors(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_put, attempts, written = s3.put_json, [], []

    def flaky(bucket: str, key: str, document: Any) -> None:
        attempts.append(key)
        if len(attempts) == 1:
            raise ConnectionError("S3 hiccup")
        real_put(bucket, key, document)
        written.append(document)

    monkeypatch.setattr(s3, "put_json", flaky)
    with TrainerHeartbeat("unit-processed", "i-0abc", seconds=0.05):
        # What the beat wrote is read from the beat itself: reading the object back while the beat's
        # thread overwrites it raced in moto ("I/O operation on closed file").
        deadline = time.monotonic() + 3
        while not written:
            assert time.monotonic() < deadline, "the heartbeat never recovered from its first error"
            time.sleep(0.05)
    assert written[0]["instance_id"] == "i-0abc" and written[0]["renewed_at"] > time.time() - 5
    # A trainer that exits cleanly leaves no heartbeat behind.
    assert s3.get_bytes("unit-processed", "_arrival/trainers/i-0abc.json") is None


def test_the_heartbeat_tells_at_once_which_model_the_trainer_took_up(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reconciler counts a trainer without a model as free for the next job: the heartbeat must
    # not wait for its period (an hour here) to say the trainer is busy, nor to say it is free again.
    written: list[Any] = []
    monkeypatch.setattr(s3, "put_json", lambda bucket, key, document: written.append(document))
    with TrainerHeartbeat("unit-processed", "i-0abc", seconds=3600) as heartbeat:
        for model in ["iris", None]:
            heartbeat.model = model
            deadline = time.monotonic() + 5
            while not written or written[-1]["model"] != model:
                assert time.monotonic() < deadline, f"the heartbeat never said {model!r}"
                time.sleep(0.01)


# Hole 4: TrainingFailed goes out before the job leaves the queue, and a failure there is survived.


def test_a_failed_event_publish_keeps_the_job_and_does_not_kill_the_worker(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = OUTPUTS["TrainingQueueUrl"]
    aws.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"model": "poison"}))
    held = sqs.receive(queue_url, wait_seconds=0, visibility_seconds=30)

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("EventBridge unreachable")

    monkeypatch.setattr(events, "publish", down)
    trainer = Trainer(WorkerSettings(max_attempts=1), OUTPUTS)
    trainer.failed("poison", held, ValueError("bad data"))  # must not raise

    assert not _visible(aws, OUTPUTS["TrainingDeadLetterQueueUrl"]), "dead-lettered without its event"
    attributes = aws.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 1  # still there, to retry


@pytest.mark.parametrize(
    ("error", "dead_lettered"),
    [
        (ValueError("the tracking server answered 503"), False),
        (StageFailedError("stage train: recipe: fitting raised ValueError: rooms", deterministic=True), True),
        (RecipeError("the recipe recipe.py defines no build_pipeline(params) function"), True),
    ],
)
def test_a_recipes_own_failure_is_dead_lettered_at_once_and_anything_else_retried(
    aws: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, dead_lettered: bool
) -> None:
    """The same code on the same data fails the same way: five tries would only delay the report."""
    queue_url = OUTPUTS["TrainingQueueUrl"]
    aws.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"model": "recipe"}))
    held = sqs.receive(queue_url, wait_seconds=0, visibility_seconds=30)
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "publish", lambda bus, kind, detail: published.append(detail))

    Trainer(WorkerSettings(max_attempts=5), OUTPUTS).failed("recipe", held, error)

    letters = _visible(aws, OUTPUTS["TrainingDeadLetterQueueUrl"])
    assert bool(letters) == dead_lettered
    if dead_lettered:
        assert str(error) in published[0]["failure_reason"] and published[0]["attempts"] == 1


def test_retries_back_off_for_minutes() -> None:
    trainer = Trainer(WorkerSettings(), OUTPUTS)
    delays = [trainer.retry_delay(attempt) for attempt in range(1, WorkerSettings().max_attempts)]
    assert sum(delays) >= 5 * 60, delays


def test_a_promotion_whose_event_failed_is_announced_by_the_next_try(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry()
    registry.install(monkeypatch)
    registry.add("3", **{"gate.decision": "promote", "gate.reason": "first model"})
    resources = Trainer(WorkerSettings(), OUTPUTS).resources

    registry.failing.add("publish ModelPromoted")
    with pytest.raises(ConnectionError):
        decision.finish_interrupted("iris", "list-3", resources)
    assert (registry.alias, registry.pointer) == ("3", "3")  # decided, not announced
    assert "promotion" in registry.tags("3")

    decision.finish_interrupted("iris", "list-3", resources)
    assert registry.sent_types() == ["ModelPromoted"]
    decision.finish_interrupted("iris", "list-3", resources)  # announced once it went out
    assert registry.sent_types() == ["ModelPromoted"]


# Hole 9: an unreachable registry is an error, not "no version yet"; the real cause is reported.


def test_an_unreachable_registry_is_not_taken_for_an_empty_one(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreachable:
        def search_model_versions(self, *args: Any) -> None:
            raise MlflowException("API request failed", error_code="TEMPORARILY_UNAVAILABLE")  # type: ignore[arg-type]  # the stubs say int; MLflow sends and reads the code name

    monkeypatch.setattr(tracking, "client", lambda: Unreachable())
    with pytest.raises(MlflowException):
        tracking.versions_with_tag("iris", "accepted_list_hash", "abc")


def _training_that_raises(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """An iris training whose run starts (as run-1) and whose pipeline then raises `error`."""
    contract = (CONTRACTS / "iris.yaml").read_bytes()
    accepted = json.dumps({"model": "iris", "datasets": []}).encode()
    monkeypatch.setattr(
        s3,  # the module train_model reads through
        "get_bytes",
        lambda bucket, key: (contract if key.endswith(".yaml") else accepted, '"e"'),
    )
    monkeypatch.setattr(train_model, "finish_interrupted", lambda *args: None)
    monkeypatch.setattr(tracking, "end_interrupted_runs", lambda *args: [])
    monkeypatch.setattr(tracking, "start_run", lambda model, tags: "run-1")

    def training_breaks(workspace: Path, run: Any) -> None:
        raise error

    monkeypatch.setattr(train_model, "_train_in", training_breaks)


def test_a_training_error_is_not_hidden_by_a_failing_end_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _training_that_raises(monkeypatch, ValueError("the real cause"))

    def server_down(run_id: str, status: str = "FINISHED") -> None:
        raise MlflowException("connection refused")

    monkeypatch.setattr(tracking, "end_run", server_down)
    resources = Trainer(WorkerSettings(), OUTPUTS).resources
    with pytest.raises(ValueError, match="the real cause"):
        train_model.train_model("iris", resources)


@pytest.mark.parametrize(
    ("interruption", "status"),
    [(ValueError("the real cause"), "FAILED"), (SystemExit(143), "KILLED")],
    ids=["an error fails the run", "a stopped trainer's run is killed"],
)
def test_a_run_ends_failed_on_an_error_and_killed_when_its_trainer_is_stopped(
    monkeypatch: pytest.MonkeyPatch, interruption: BaseException, status: str
) -> None:
    _training_that_raises(monkeypatch, interruption)
    ended: list[tuple[str, str]] = []
    monkeypatch.setattr(tracking, "end_run", lambda run_id, status="FINISHED": ended.append((run_id, status)))
    resources = Trainer(WorkerSettings(), OUTPUTS).resources
    with pytest.raises(type(interruption)):
        train_model.train_model("iris", resources)
    assert ended == [("run-1", status)]


# Hole 2: lineage never outgrows MLflow's tags; the whole list is kept elsewhere.


def _accepted(files: int) -> dict[str, Any]:
    return {
        "model": "iris",
        "datasets": [
            {
                "content_hash": f"{index:064x}",
                "source": {
                    "bucket": "raw",
                    "key": f"iris/month-{index:04d}.csv",
                    "version_id": f"v{index:030d}",
                },
            }
            for index in range(files)
        ],
    }


def test_the_lineage_of_500_files_survives_the_tracking_server(tmp_path: Path) -> None:
    accepted = _accepted(500)
    contract = parse_contract((CONTRACTS / "iris.yaml").read_bytes())
    tags = train_model.lineage_tags(accepted, contract, "list-hash")
    assert all(len(value) <= train_model.TAG_VALUE_LIMIT for value in tags.values())

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client.cache_clear()
    try:
        run_id = tracking.start_run("iris", tags)
        stored = tracking.run_tags(run_id)
    finally:
        tracking.client.cache_clear()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    shown = json.loads(stored["lineage.sources"])
    assert stored["lineage.files"] == "500"
    assert shown[-1].startswith("s3://raw/iris/month-0499.csv?versionId=")  # the newest are kept
    assert 50 < len(shown) < 500
    assert json.loads(stored["lineage.content_hashes"])[-1] == f"{499:064x}"

    # The bundle's lineage (and crash recovery's) comes from the data list, whole.
    lineage = decision.lineage_of(run_id, accepted, stored, dvc_lock="")
    assert len(lineage.sources) == 500 and len(lineage.content_hashes) == 500


# Trust boundary: the trainer unpickles a champion only from the artifact stores it trusts.


def test_a_champion_stored_outside_the_trusted_stores_is_never_unpickled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Registry:
        location = "s3://someone-elses-bucket/model"

        def get_model_version_download_uri(self, name: str, version: str) -> str:
            return self.location

    registry, loaded = Registry(), cast(list[str], [])
    monkeypatch.setattr(tracking, "client", lambda: registry)
    monkeypatch.setattr(tracking, "_unpickle", loaded.append)
    trusted = WorkerSettings().trusted_artifact_roots

    with pytest.raises(tracking.UntrustedModelError, match="someone-elses-bucket"):
        tracking.load_model("iris", "4", trusted)
    assert loaded == []

    registry.location = "mlflow-artifacts:/1/models/m-abc/artifacts"
    tracking.load_model("iris", "4", trusted)
    assert loaded == [registry.location]


def test_a_registration_retried_by_the_client_leaves_one_version(monkeypatch: pytest.MonkeyPatch) -> None:
    class Registry:
        def __init__(self) -> None:
            self.versions, self.deleted = ["5", "6"], cast(list[str], [])

        def search_model_versions(self, query: str) -> list[Any]:
            assert "run_id = 'run-5'" in query
            return [tracking.ModelVersion("iris", version, "run-5", {}) for version in self.versions]

        def delete_model_version(self, name: str, version: str) -> None:
            self.deleted.append(version)

    registry = Registry()
    monkeypatch.setattr(tracking, "client", lambda: registry)
    assert tracking._only_version_of_run("iris", "run-5", "6") == "5"
    assert registry.deleted == ["6"]


def test_the_longest_wait_counts_from_when_the_job_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(main, "time", clock)
    trainer = Trainer(WorkerSettings(quiet_seconds=2, max_quiet_seconds=30), OUTPUTS)

    def sent(seconds_ago: float) -> dict[str, Any]:
        return {"Attributes": {"SentTimestamp": str(int((clock.now - seconds_ago) * 1000))}}

    # Queued 10 s behind another model's training: 20 s of waiting left, not 30.
    assert trainer.wait_deadline([sent(10)]) - clock.monotonic() == pytest.approx(20)
    # Queued longer than the cap: still one quiet period, for a burst to settle.
    assert trainer.wait_deadline([sent(90), sent(5)]) - clock.monotonic() == pytest.approx(2)


def _release_test_trainer(aws: Any, stack_release: list[str]) -> tuple[Trainer, list[str]]:
    """A trainer of release A, with two jobs queued, recording the models it handles; the stack's
    release is stack_release[0]."""
    queue_url = OUTPUTS["TrainingQueueUrl"]
    for model in ("first", "second"):
        aws.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"model": model}))
    settings = WorkerSettings.model_construct(
        **{
            **WorkerSettings().model_dump(),
            "idle_seconds": 3600,  # an hour of idling allowed: only the release can end it
            "poll_seconds": 0,
            "release_version": "0.1.0-a",
        }
    )
    trainer = Trainer(settings, OUTPUTS)
    trainer.stack_release = lambda: stack_release[0]
    handled: list[str] = []

    def handle(model: str, messages: list[dict[str, Any]], lease: VisibilityHeartbeat) -> None:
        handled.append(model)
        stack_release[0] = "0.1.0-b"  # the release is deployed while the job trains
        lease.forget(messages)
        for message in messages:
            sqs.delete(queue_url, message["ReceiptHandle"])

    trainer.handle = handle  # type: ignore[method-assign]
    return trainer, handled


def _queued(aws: Any) -> int:
    attributes = aws.get_queue_attributes(
        QueueUrl=OUTPUTS["TrainingQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_a_trainer_of_an_older_release_ends_after_the_job_it_holds_and_not_before(aws: Any) -> None:
    # GIVEN a trainer of release A taking a job, and release B deployed while it trains
    trainer, handled = _release_test_trainer(aws, ["0.1.0-a"])

    # WHEN it runs
    trainer.run()

    # THEN it finished the job it held, then ended, holding nothing, the other job left queued for a
    # trainer of release B
    assert len(handled) == 1
    assert trainer.held == []
    assert _queued(aws) == 1
    assert trainer.superseded_by_a_release() == "0.1.0-b"


def test_an_idle_trainer_of_an_older_release_ends_before_taking_a_job(aws: Any) -> None:
    # GIVEN a trainer of release A, the stack already on B, and jobs queued
    trainer, handled = _release_test_trainer(aws, ["0.1.0-b"])

    # WHEN it runs
    trainer.run()

    # THEN it takes none of them: a trainer of release B trains them
    assert handled == []
    assert _queued(aws) == 2


def test_a_trainer_of_the_stacks_release_is_not_superseded(aws: Any) -> None:
    trainer, _ = _release_test_trainer(aws, ["0.1.0-a"])
    assert trainer.superseded_by_a_release() is None
