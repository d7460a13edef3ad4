"""The reconciler against moto: one trainer whatever the lease does, and trainers that stopped
renewing their heartbeat are replaced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from common import reconcile
from common.adapters import ec2, functions, s3, sqs
from common.layout import trainer_heartbeat_key
from common.settings import PipelineSettings, get_pipeline_settings
from handlers import handle_reconcile
from tests.unit.conftest import FakeLambdaContext, load_event

PROCESSED = "unit-processed"
STACK = "unit"
# moto starts instances of any image; listing its real ones to pick one costs seconds per test.
IMAGE = "ami-0123456789abcdef0"


class FakeTime:
    """The reconciler's view of the clock: real, plus however far a test moves it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.monotonic, self.sleep = time.monotonic, time.sleep

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class FakeStack:
    ec2: Any
    sqs: Any
    s3: Any
    queue_url: str
    clock: FakeTime

    @property
    def settings(self) -> PipelineSettings:
        return get_pipeline_settings()

    def queue_job(self, model: str = "iris", *, marked: bool = True) -> None:
        """A training job, queued as ingest queues one (its model marked first), or, not `marked`, as
        a job replayed from the dead-letter queue comes back."""
        if marked:
            reconcile.queue_training(PROCESSED, self.queue_url, model, f"{model}-{time.time_ns()}")
            return
        self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=json.dumps({"model": model}),
            MessageGroupId=model,
            MessageDeduplicationId=f"{model}-{time.time_ns()}",
        )

    def start_trainer(self) -> str:
        """A trainer started by an earlier reconcile."""
        instance = self.ec2.run_instances(
            ImageId=IMAGE,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": ec2.ROLE_TAG, "Value": "trainer"},
                        {"Key": ec2.STACK_TAG, "Value": STACK},
                    ],
                }
            ],
        )["Instances"][0]
        return str(instance["InstanceId"])

    def heartbeat(self, instance_id: str, seconds_ago: float, model: str | None = None) -> None:
        document = {"instance_id": instance_id, "renewed_at": self.clock.time() - seconds_ago, "model": model}
        self.s3.put_object(
            Bucket=PROCESSED, Key=trainer_heartbeat_key(instance_id), Body=json.dumps(document)
        )

    def trainers(self) -> list[str]:
        return ec2.live_instances("trainer", STACK)

    def lease(self) -> dict[str, Any]:
        found = s3.get_bytes(PROCESSED, reconcile.LEASE_KEY)
        assert found is not None
        document: dict[str, Any] = json.loads(found[0])
        return document


def _clear_cached() -> None:
    for cached in (
        s3.s3_client,
        sqs.sqs_client,
        ec2.ec2_client,
        functions.lambda_client,
        get_pipeline_settings,
    ):
        cached.cache_clear()


@pytest.fixture
def stack(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:
    _clear_cached()
    clock = FakeTime()
    monkeypatch.setattr(reconcile, "time", clock)
    with mock_aws():
        s3_client = boto3.client("s3")
        s3_client.create_bucket(Bucket=PROCESSED)
        s3_client.put_bucket_versioning(Bucket=PROCESSED, VersioningConfiguration={"Status": "Enabled"})
        sqs_client = boto3.client("sqs")
        queue_url = sqs_client.create_queue(QueueName="training.fifo", Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        ec2_client = boto3.client("ec2")
        template = ec2_client.create_launch_template(
            LaunchTemplateName="trainer", LaunchTemplateData={"ImageId": IMAGE}
        )["LaunchTemplate"]["LaunchTemplateId"]
        for name, value in {
            "ARRIVAL_STACK_NAME": STACK,
            "PROCESSED_BUCKET": PROCESSED,
            "QUARANTINE_BUCKET": "unit-quarantine",
            "CONFIG_BUCKET": "unit-config",
            "TRAINING_QUEUE_URL": queue_url,
            "TRAINER_LAUNCH_TEMPLATE_ID": template,
            "EVENT_BUS_NAME": "bus",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("RECONCILE_FUNCTION_NAME", raising=False)
        yield FakeStack(ec2_client, sqs_client, s3_client, queue_url, clock)
    _clear_cached()


def _emulate_client_token_idempotency() -> None:
    """EC2 answers a RunInstances call whose ClientToken it has seen with the instances it started
    for that token (AWS docs, "Ensuring idempotency"); moto starts new ones. This restores EC2's way."""
    answered: dict[str, tuple[Any, dict[str, Any]]] = {}
    events = ec2.ec2_client().meta.events

    def replay(params: dict[str, Any], context: dict[str, Any], **_: Any) -> tuple[Any, Any] | None:
        context["client_token"] = params["body"]["ClientToken"]
        return answered.get(context["client_token"])

    def remember(http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        answered.setdefault(context["client_token"], (http_response, parsed))

    # A before-call handler's answer stands in for the call; botocore-stubs type handlers as returning None.
    events.register("before-call.ec2.RunInstances", replay)  # type: ignore[arg-type]
    events.register("after-call.ec2.RunInstances", remember)


def _another_reconciler_takes_over(event: str, stack: FakeStack) -> list[reconcile.ReconcileOutcome]:
    """At the first botocore `event`, the caller's lease lapses (its call hangs) and another
    reconciler acquires it and runs to the end. Returns that other run's outcome, once it ran."""
    other: list[reconcile.ReconcileOutcome] = []

    def take_over(**_: Any) -> None:
        if other:
            return
        other.append(reconcile.ReconcileOutcome("lease_busy"))  # guards the nested run's own calls
        stack.clock.advance(stack.settings.reconcile_lease_seconds + 1)
        other[0] = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    ec2.ec2_client().meta.events.register(event, take_over)
    return other


def test_a_lease_that_lapses_while_instances_are_listed_starts_one_trainer(stack: FakeStack) -> None:
    # GIVEN a queued job, and a reconciler whose DescribeInstances call hangs past its lease while
    # another reconciler takes the lapsed lease over and starts a trainer
    stack.queue_job()
    other = _another_reconciler_takes_over("after-call.ec2.DescribeInstances", stack)

    # WHEN the first reconciler's call returns (listing no trainer: it was sent before the launch)
    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN only the other one started a trainer
    assert [o.action for o in other] == ["launched"]
    assert stack.trainers() == [other[0].instance_id]
    assert outcome.action == "lease_lost"


def test_a_lease_that_lapses_during_the_launch_call_starts_one_trainer(stack: FakeStack) -> None:
    # GIVEN a queued job, and a reconciler whose RunInstances call hangs past its lease while
    # another reconciler takes the lapsed lease over and starts a trainer
    stack.queue_job()
    other = _another_reconciler_takes_over("before-call.ec2.RunInstances", stack)
    _emulate_client_token_idempotency()  # after: the first call reaches EC2 after the other's

    # WHEN the first reconciler's call reaches EC2 after all
    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN both asked for the same launch, and one trainer runs
    assert [o.action for o in other] == ["launched"]
    assert outcome.instance_id == other[0].instance_id
    assert stack.trainers() == [other[0].instance_id]
    assert stack.lease()["launches"] == 1


def test_a_launch_token_whose_instance_ended_is_not_reused(stack: FakeStack) -> None:
    # GIVEN a reconciler that launched a trainer and died before recording it, and the trainer
    # has ended since
    stack.queue_job()
    _emulate_client_token_idempotency()
    first = reconcile.ensure_trainers(stack.settings, wait_seconds=0)
    assert first.instance_id is not None
    lease = stack.lease()
    stack.s3.put_object(
        Bucket=PROCESSED,
        Key=reconcile.LEASE_KEY,
        Body=json.dumps({**lease, "launches": 0, "recent_launches": []}),
    )
    stack.ec2.terminate_instances(InstanceIds=[first.instance_id])

    # WHEN the next reconciler launches (with the token EC2 already answered)
    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN it starts a new trainer instead of taking the ended one for it
    assert outcome.action == "launched"
    assert outcome.instance_id != first.instance_id
    assert stack.trainers() == [outcome.instance_id]
    assert stack.lease()["launches"] == 2


def test_a_lease_too_short_for_a_launch_call_launches_nothing(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_LEASE_SECONDS", str(ec2.WORST_CASE_CALL_SECONDS - 1))
    stack.queue_job()

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome.action == "lease_lost"
    assert stack.trainers() == []


def test_the_default_lease_outlasts_the_slowest_launch_call(aws_credentials: None) -> None:
    ec2.ec2_client.cache_clear()
    # Any: botocore sets Config's options as attributes, which botocore-stubs do not declare.
    config: Any = ec2.ec2_client().meta.config
    attempts = config.retries["total_max_attempts"]
    # Each attempt may wait to connect and then to read; standard mode backs off at most 1 s.
    slowest = attempts * (config.connect_timeout + config.read_timeout) + 1
    assert slowest <= ec2.WORST_CASE_CALL_SECONDS
    lease = PipelineSettings.model_fields["reconcile_lease_seconds"].default
    # The renewal before RunInstances must fit in what is left, too.
    assert lease - ec2.WORST_CASE_CALL_SECONDS >= 5


def test_a_trainer_with_a_fresh_heartbeat_is_left_running(stack: FakeStack) -> None:
    stack.queue_job()
    trainer = stack.start_trainer()
    stack.heartbeat(trainer, seconds_ago=20)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome == reconcile.ReconcileOutcome("already_running", trainer)
    assert stack.trainers() == [trainer]


def test_a_trainer_whose_heartbeat_went_stale_is_terminated_and_replaced(stack: FakeStack) -> None:
    # GIVEN queued work and a trainer that stopped renewing its heartbeat
    stack.queue_job()
    stuck = stack.start_trainer()
    stack.heartbeat(stuck, seconds_ago=stack.settings.trainer_heartbeat_stale_seconds + 1)

    # WHEN the reconciler runs
    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN the stuck one is terminated and a new one launched
    assert outcome.action == "launched"
    assert outcome.terminated == (stuck,)
    assert stack.trainers() == [outcome.instance_id]
    assert outcome.instance_id != stuck


def test_a_stuck_trainer_is_terminated_even_without_work(stack: FakeStack) -> None:
    stuck = stack.start_trainer()
    stack.heartbeat(stuck, seconds_ago=stack.settings.trainer_heartbeat_stale_seconds + 1)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome == reconcile.ReconcileOutcome("no_work", terminated=(stuck,))
    assert stack.trainers() == []


def test_a_booting_trainer_without_a_heartbeat_yet_is_left_running(stack: FakeStack) -> None:
    stack.queue_job()
    booting = stack.start_trainer()
    stack.clock.advance(stack.settings.trainer_boot_grace_seconds - 60)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome == reconcile.ReconcileOutcome("already_running", booting)
    assert stack.trainers() == [booting]


def test_a_trainer_that_never_sent_a_heartbeat_is_replaced_after_the_boot_grace(stack: FakeStack) -> None:
    stack.queue_job()
    never_started = stack.start_trainer()
    stack.clock.advance(stack.settings.trainer_boot_grace_seconds + 1)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome.action == "launched"
    assert outcome.terminated == (never_started,)
    assert stack.trainers() == [outcome.instance_id]


def test_an_unreadable_heartbeat_counts_as_none(stack: FakeStack) -> None:
    stack.queue_job()
    trainer = stack.start_trainer()
    stack.s3.put_object(Bucket=PROCESSED, Key=trainer_heartbeat_key(trainer), Body=b"{not json")

    assert reconcile.ensure_trainers(stack.settings, wait_seconds=0).action == "already_running"
    stack.clock.advance(stack.settings.trainer_boot_grace_seconds + 1)
    assert reconcile.ensure_trainers(stack.settings, wait_seconds=0).terminated == (trainer,)


def test_ingest_asks_the_reconcile_function_and_starts_nothing_itself(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a deployed stack, where ingest knows its reconcile function
    monkeypatch.setenv("RECONCILE_FUNCTION_NAME", "unit-ReconcileFunction")
    stack.queue_job()

    with Stubber(functions.lambda_client()) as lambda_api:
        lambda_api.add_response(
            "invoke",
            {"StatusCode": 202},
            {"FunctionName": "unit-ReconcileFunction", "InvocationType": "Event", "Payload": ANY},
        )
        # WHEN ingest has queued a job
        outcome = reconcile.request_trainer(stack.settings)
        # THEN it invoked the reconciler without waiting for it, and launched nothing
        lambda_api.assert_no_pending_responses()

    assert outcome.action == "requested"
    assert stack.trainers() == []


@pytest.mark.parametrize("event", ["reconcile_training_queued", "reconcile_schedule"])
def test_the_reconcile_function_reconciles_whatever_invoked_it(
    stack: FakeStack, lambda_context: FakeLambdaContext, event: str
) -> None:
    stack.queue_job()

    response = handle_reconcile.handler(load_event(event), lambda_context)

    trainer = stack.trainers()[0]
    assert response == asdict(reconcile.ReconcileOutcome("launched", trainer, launched=(trainer,)))


def _metrics_printed(printed: str, name: str) -> list[dict[str, Any]]:
    """The EMF documents of one metric in what the function printed (CloudWatch reads them off its log)."""
    documents = [json.loads(line) for line in printed.splitlines() if line.startswith('{"_aws"')]
    return [document for document in documents if name in document]


def test_a_launch_ec2_refuses_is_counted_for_the_stacks_alarm_and_fails_the_run(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN queued work, and EC2 out of capacity
    stack.queue_job()

    def out_of_capacity(*_: Any, **__: Any) -> str:
        raise RuntimeError("InsufficientInstanceCapacity")

    monkeypatch.setattr(ec2, "run_from_template", out_of_capacity)

    # WHEN the reconciler runs, THEN it fails (the function's errors alarm sees it too)
    with pytest.raises(RuntimeError, match="InsufficientInstanceCapacity"):
        reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # AND the launch that failed is one datapoint of the metric the stack's alarm watches
    (document,) = _metrics_printed(capsys.readouterr().out, reconcile.LAUNCH_FAILED_METRIC)
    assert document[reconcile.LAUNCH_FAILED_METRIC] == [1.0]
    assert document["stack"] == STACK
    assert ["stack", "service"] in document["_aws"]["CloudWatchMetrics"][0]["Dimensions"]


def test_trainers_ended_for_a_lost_heartbeat_are_counted_for_the_stacks_alarm(
    stack: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.queue_job()
    stuck, never_started = stack.start_trainer(), stack.start_trainer()
    stack.clock.advance(stack.settings.trainer_boot_grace_seconds + 1)
    stack.heartbeat(stuck, seconds_ago=stack.settings.trainer_heartbeat_stale_seconds + 1)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert sorted(outcome.terminated) == sorted([stuck, never_started])
    (document,) = _metrics_printed(capsys.readouterr().out, reconcile.HEARTBEAT_LOST_METRIC)
    assert document[reconcile.HEARTBEAT_LOST_METRIC] == [2.0]
    assert document["stack"] == STACK


def test_a_healthy_reconcile_counts_no_failure(stack: FakeStack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.queue_job()

    assert reconcile.ensure_trainers(stack.settings, wait_seconds=0).action == "launched"

    printed = capsys.readouterr().out
    assert not _metrics_printed(printed, reconcile.LAUNCH_FAILED_METRIC)
    assert not _metrics_printed(printed, reconcile.HEARTBEAT_LOST_METRIC)


def test_jobs_of_several_models_start_a_trainer_each_up_to_max_trainers(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_TRAINERS", "4")
    for model in ["a", "b", "c", "d", "e", "f"]:
        stack.queue_job(model)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome.action == "launched"
    assert len(set(outcome.launched)) == 4
    assert sorted(stack.trainers()) == sorted(outcome.launched)
    assert outcome.instance_id == outcome.launched[0]


def test_trainers_still_booting_count_for_the_jobs_they_will_take(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_TRAINERS", "4")
    stack.queue_job("a")
    stack.queue_job("b")
    first = reconcile.ensure_trainers(stack.settings, wait_seconds=0)
    assert len(first.launched) == 2

    # WHEN ingest asks again before either trainer has beaten, then a third model's job arrives
    again = reconcile.ensure_trainers(stack.settings, wait_seconds=0)
    stack.queue_job("c")
    third = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN the booting ones cover the first two jobs, and the third gets a trainer of its own
    assert again.action == "already_running" and again.launched == ()
    assert len(third.launched) == 1
    assert len(stack.trainers()) == 3


def test_a_free_trainer_takes_the_next_job_and_busy_ones_do_not(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_TRAINERS", "4")
    busy, idle = stack.start_trainer(), stack.start_trainer()
    stack.heartbeat(busy, seconds_ago=1, model="a")
    stack.heartbeat(idle, seconds_ago=1)
    for model in ["b", "c", "d"]:
        stack.queue_job(model)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # 3 waiting jobs, 1 free trainer: 2 more, and 4 in all
    assert len(outcome.launched) == 2
    assert len(stack.trainers()) == 4
    stack.queue_job("e")
    assert reconcile.ensure_trainers(stack.settings, wait_seconds=0).launched == ()  # MaxTrainers


def test_ten_jobs_of_one_model_start_one_trainer_and_its_later_jobs_wait_for_it(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_TRAINERS", "4")
    for _ in range(10):
        stack.queue_job("burst")
    first = reconcile.ensure_trainers(stack.settings, wait_seconds=0)
    assert len(first.launched) == 1

    # WHEN the trainer takes up a job of the model, and more files for it queue more jobs
    (trainer,) = first.launched
    stack.heartbeat(trainer, seconds_ago=0, model="burst")
    reconcile.taken_up(PROCESSED, "burst")
    stack.queue_job("burst")
    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    # THEN they wait for that trainer, in their model's FIFO group: no second trainer
    assert outcome.action == "already_running" and outcome.launched == ()
    assert stack.trainers() == [trainer]


def test_a_job_queued_without_a_mark_still_gets_a_trainer_when_none_runs(stack: FakeStack) -> None:
    stack.queue_job("replayed", marked=False)

    outcome = reconcile.ensure_trainers(stack.settings, wait_seconds=0)

    assert outcome.action == "launched" and len(outcome.launched) == 1


@pytest.mark.parametrize(
    ("max_trainers", "models", "unlisted", "waiting", "pending", "expected"),
    [
        (4, [], 0, 0, 0, 0),  # nothing to do
        (4, [], 0, 0, 1, 1),  # a dead trainer's job in flight: it comes back, someone must take it
        (4, ["a"], 0, 0, 1, 0),  # the busy trainer holds the job in flight
        (4, [None], 0, 1, 1, 0),  # an idle trainer takes it
        (4, ["a", None], 1, 5, 5, 1),  # 5 waiting, 2 free (idle, booting): 3, but only 1 slot left
        (1, ["a"], 0, 3, 4, 0),  # MaxTrainers 1: the one trainer works through the queue
    ],
)
def test_trainers_to_launch(
    max_trainers: int, models: list[str | None], unlisted: int, waiting: int, pending: int, expected: int
) -> None:
    live = [reconcile.LiveTrainer(f"i-{index}", model) for index, model in enumerate(models)]
    assert reconcile.trainers_to_launch(max_trainers, live, unlisted, waiting, pending) == expected
