"""The sweep against moto: which raw versions it takes for lost notifications, what it sends in
their place, and how a pass is spread over runs. No notification reaches ingest here unless a test
hands one to the ingest handler itself, so every upload starts as one whose notification was lost.
(The same path runs through LocalStack, with a notification really dropped, in tests/e2e/test_sweep.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from moto import mock_aws

from common import outcomes, sweep
from common.adapters import s3, sqs
from common.layout import SWEEP_STATE_KEY, outcome_key
from common.outcomes import Outcome, RawObject
from common.settings import get_sweep_settings
from common.sweep import SweepReport, SweepStatus, run_sweep
from handlers import handle_ingest, handle_sweep
from tests import datasets
from tests.unit.conftest import FakeLambdaContext, load_event
from tests.unit.test_handle_ingest import RAW, FakeStack, _upload
from tests.unit.test_handle_ingest import stack as stack  # the fixture: moto with ingest's buckets

GRACE = 30.0
INTERVAL = 300.0  # the template's default SweepIntervalMinutes, 5
PROCESSED = "unit-processed"


@dataclass
class Sweep:
    s3: Any
    sqs: Any
    ingest_queue: str

    def run(self, now: float) -> SweepReport:
        return run_sweep(get_sweep_settings(), now, lambda: 60.0)

    def landed_at(self, key: str, version_id: str) -> float:
        """The version's LastModified, as the sweep reads it off the listing."""
        versions = self.s3.list_object_versions(Bucket=RAW, Prefix=key)["Versions"]
        (found,) = [entry for entry in versions if entry["VersionId"] == version_id]
        return float(found["LastModified"].timestamp())

    def upload(self, key: str, body: bytes) -> tuple[str, float]:
        """A version whose notification never reaches ingest: its id, and when it landed."""
        version: str = self.s3.put_object(Bucket=RAW, Key=key, Body=body)["VersionId"]
        return version, self.landed_at(key, version)

    def sent(self) -> list[dict[str, Any]]:
        """What reached the ingest queue (taken off it)."""
        messages = self.sqs.receive_message(
            QueueUrl=self.ingest_queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        for message in messages:
            self.sqs.delete_message(QueueUrl=self.ingest_queue, ReceiptHandle=message["ReceiptHandle"])
        return list(messages)

    def marker(self, key: str, version_id: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=PROCESSED, Key=outcome_key(key, version_id))["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        found: dict[str, Any] = json.loads(body.read())
        return found


def _sweep_of(s3_client: Any, sqs_client: Any, monkeypatch: pytest.MonkeyPatch) -> Sweep:
    queue: str = sqs_client.create_queue(QueueName="ingest")["QueueUrl"]
    for name, value in {
        "ARRIVAL_STACK_NAME": "unit",
        "RAW_BUCKET": RAW,
        "PROCESSED_BUCKET": PROCESSED,
        "INGEST_QUEUE_URL": queue,
        "SWEEP_GRACE_SECONDS": str(GRACE),
    }.items():
        monkeypatch.setenv(name, value)
    get_sweep_settings.cache_clear()
    return Sweep(s3_client, sqs_client, queue)


@pytest.fixture
def swept(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sweep]:
    """The raw and processed buckets and the ingest queue, in moto: what the sweep touches."""
    s3.s3_client.cache_clear()
    sqs.sqs_client.cache_clear()
    with mock_aws():
        s3_client = boto3.client("s3")
        for bucket in (RAW, PROCESSED):
            s3_client.create_bucket(Bucket=bucket)
        s3_client.put_bucket_versioning(Bucket=RAW, VersioningConfiguration={"Status": "Enabled"})
        yield _sweep_of(s3_client, boto3.client("sqs"), monkeypatch)
    s3.s3_client.cache_clear()
    sqs.sqs_client.cache_clear()
    get_sweep_settings.cache_clear()


@pytest.fixture
def with_ingest(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Sweep, FakeStack]]:
    """The same, within the whole stack the ingest handler needs (slower to make: EC2 in moto)."""
    yield _sweep_of(stack.s3, stack.sqs, monkeypatch), stack
    get_sweep_settings.cache_clear()


def _as_delivered(message: dict[str, Any]) -> dict[str, Any]:
    """The SQS event the ingest function gets for a message on its queue."""
    event = load_event("ingest_sqs_s3_object_created")
    record = {**event["Records"][0], "messageId": message["MessageId"], "body": message["Body"]}
    return {"Records": [record]}


def _csv(rows: int = 50, seed: int = 0) -> bytes:
    return datasets.to_csv(datasets.iris_frame(rows, seed=seed))


def test_a_file_whose_notification_never_came_is_sent_to_ingest_as_s3_would_have_sent_it(
    swept: Sweep,
) -> None:
    # GIVEN a file in the raw bucket whose notification never reached ingest
    key = "iris/may data+1.csv"
    version, landed = swept.upload(key, _csv())

    # WHEN a pass starts after the grace period
    report = swept.run(now=landed + GRACE + 1)

    # THEN S3's notification for that version is on the ingest queue, marked as the sweep's
    assert report.status is SweepStatus.finished
    assert report.requeued == [{"key": key, "version_id": version}]
    (message,) = swept.sent()
    assert message["MessageAttributes"]["requeued_by"]["StringValue"] == "sweep"
    (record,) = json.loads(message["Body"])["Records"]
    assert (record["eventSource"], record["eventName"]) == ("aws:s3", "ObjectCreated:Put")
    assert record["s3"]["bucket"]["name"] == RAW
    assert record["s3"]["object"]["key"] == "iris/may+data%2B1.csv"  # URL-encoded, as S3 encodes it
    assert record["s3"]["object"]["versionId"] == version
    # AND the version is marked, so it is sent once
    marker = swept.marker(key, version)
    assert marker is not None and marker["status"] == "requeued"


@pytest.mark.parametrize(
    ("key", "outcome"),
    [
        ("iris/may data+1.csv", Outcome.accepted),  # a valid file, under a key S3 encodes
        ("iris/notes.txt", Outcome.ignored),  # a suffix ingest does not read
        ("nobody/data.csv", Outcome.quarantined),  # a model without a contract
        ("loose.csv", Outcome.quarantined),  # no <model>/ prefix
    ],
)
def test_what_the_sweep_sends_gets_the_file_the_outcome_ingest_gives_any_file(
    with_ingest: tuple[Sweep, FakeStack], lambda_context: FakeLambdaContext, key: str, outcome: Outcome
) -> None:
    swept, stack = with_ingest
    version, landed = swept.upload(key, _csv())
    swept.run(now=landed + GRACE + 1)
    (message,) = swept.sent()

    response = handle_ingest.handler(_as_delivered(message), lambda_context)

    assert response == {"batchItemFailures": []}
    marker = swept.marker(key, version)
    assert marker is not None and marker["status"] == outcome.value
    if outcome is Outcome.accepted:
        accepted = stack.accepted("iris")
        assert accepted is not None
        [entry] = accepted["datasets"]
        assert (entry["source"]["key"], entry["source"]["version_id"]) == (key, version)


def test_a_file_whose_notification_came_is_left_alone_even_while_ingest_retries_it(
    with_ingest: tuple[Sweep, FakeStack], lambda_context: FakeLambdaContext
) -> None:
    swept, stack = with_ingest
    # GIVEN one file ingest accepted, and one it keeps failing on (its model's contract is broken)
    handle_ingest.handler(_upload(stack, "iris/a.csv", _csv()), lambda_context)
    stack.s3.put_object(Bucket="unit-config", Key="contracts/broken.yaml", Body=b"model: [broken")
    failing = _upload(stack, "broken/b.csv", _csv(seed=1))
    assert handle_ingest.handler(failing, lambda_context)["batchItemFailures"]

    # WHEN a pass runs well after both landed
    versions = stack.s3.list_object_versions(Bucket=RAW)["Versions"]
    latest = max(entry["LastModified"].timestamp() for entry in versions)
    report = swept.run(now=latest + GRACE + 1)

    # THEN it checked both and sent nothing: a notification that arrived is ingest's to finish
    assert (report.status, report.checked, report.requeued) == (SweepStatus.finished, 2, [])
    assert swept.sent() == []


def test_a_file_younger_than_the_grace_period_is_left_to_the_next_pass(swept: Sweep) -> None:
    version, landed = swept.upload("iris/a.csv", _csv())

    early = swept.run(now=landed + GRACE - 5)
    assert (early.status, early.checked, early.requeued) == (SweepStatus.finished, 0, [])

    later = swept.run(now=landed + GRACE - 5 + INTERVAL)
    assert later.requeued == [{"key": "iris/a.csv", "version_id": version}]


@pytest.mark.parametrize("phase", [0.0, 0.05, 0.25, 0.5, 0.95, 0.999])
def test_a_lost_notification_is_replaced_within_the_interval_plus_the_grace_period(
    swept: Sweep, phase: float
) -> None:
    # GIVEN passes every INTERVAL, the first `phase` of an interval before the file landed
    version, landed = swept.upload("iris/a.csv", _csv())
    first = landed - phase * INTERVAL
    swept.run(now=first)
    passes = [first + INTERVAL * step for step in range(1, 4)]

    # WHEN the passes run in turn
    sent_by = next(start for start in passes if swept.run(now=start).requeued)

    # THEN the first pass that starts GRACE after the file landed sends it: within the bound
    assert sent_by == min(start for start in passes if start >= landed + GRACE)
    assert sent_by - landed <= INTERVAL + GRACE
    assert [json.loads(m["Body"])["Records"][0]["s3"]["object"]["versionId"] for m in swept.sent()] == [
        version
    ]


def test_a_version_is_sent_once_however_many_passes_see_it(swept: Sweep) -> None:
    # GIVEN passes that each find the ingest queue drained, the notification sent taken off it (as
    # ingest takes one before it marks the file received)
    _, landed = swept.upload("iris/a.csv", _csv())

    sent = []
    for step in range(3):
        sent.append(len(swept.run(now=landed + GRACE + 1 + step * INTERVAL).requeued))
        swept.sent()

    assert sent == [1, 0, 0]


def test_every_version_of_an_overwritten_key_is_swept(swept: Sweep) -> None:
    older, _ = swept.upload("iris/month.csv", _csv(seed=1))
    newer, landed = swept.upload("iris/month.csv", _csv(seed=2))

    report = swept.run(now=landed + GRACE + 1)

    assert sorted(entry["version_id"] for entry in report.requeued) == sorted([older, newer])


def test_a_pass_waits_while_notifications_still_wait_in_the_ingest_queue(swept: Sweep) -> None:
    # GIVEN a notification waiting in the ingest queue (ingest is behind)
    _, landed = swept.upload("iris/a.csv", _csv())
    swept.sqs.send_message(QueueUrl=swept.ingest_queue, MessageBody="{}")

    # THEN a pass does not start: what waits there is late, not lost
    report = swept.run(now=landed + GRACE + 1)
    assert (report.status, report.requeued) == (SweepStatus.deferred, [])
    assert "1 notification(s) wait in the ingest queue" in report.detail

    # AND once the queue is drained, the next pass sends the file
    swept.sent()
    assert len(swept.run(now=landed + GRACE + 2).requeued) == 1


def test_a_run_stops_at_its_limit_and_the_next_goes_on_from_there(
    swept: Sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN five lost files, listed two versions a page, and a run allowed two versions
    monkeypatch.setattr(sweep, "PAGE_SIZE", 2)
    monkeypatch.setenv("SWEEP_MAX_VERSIONS_PER_RUN", "2")
    get_sweep_settings.cache_clear()
    landed = max(swept.upload(f"iris/{n}.csv", _csv(seed=n))[1] for n in range(5))
    now = landed + GRACE + 1

    # WHEN runs follow one another
    reports = [swept.run(now=now + step) for step in range(3)]

    # THEN each covers a page, the last finishes the pass, and every file is sent once
    assert [r.status for r in reports] == [SweepStatus.paused, SweepStatus.paused, SweepStatus.finished]
    assert [len(r.requeued) for r in reports] == [2, 2, 1]
    keys = {json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in swept.sent() + swept.sent()}
    assert keys == {f"iris/{n}.csv" for n in range(5)}
    state = json.loads(swept.s3.get_object(Bucket=PROCESSED, Key=SWEEP_STATE_KEY)["Body"].read())
    assert state["pass_started_at"] is None and state["checked_through"] == now - GRACE


def test_a_run_stops_when_its_time_runs_short(swept: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "PAGE_SIZE", 1)
    landed = max(swept.upload(f"iris/{n}.csv", _csv(seed=n))[1] for n in range(3))
    time_left = iter([120.0, 60.0, 10.0])  # the claim, then after each page

    report = run_sweep(get_sweep_settings(), landed + GRACE + 1, lambda: next(time_left))

    assert (report.status, len(report.requeued)) == (SweepStatus.paused, 2)


def test_a_run_while_another_holds_the_sweep_does_nothing(swept: Sweep) -> None:
    # GIVEN a run that, while it lists the bucket, is overlapped by a second one
    _, landed = swept.upload("iris/a.csv", _csv())
    now = landed + GRACE + 1
    asked: list[float] = []
    overlapping: list[SweepReport] = []

    def time_left() -> float:
        asked.append(now)
        if len(asked) == 2:  # the first run holds the sweep by now (it asked once, to claim it)
            overlapping.append(swept.run(now=now + 1))
        return 120.0

    first = run_sweep(get_sweep_settings(), now, time_left)

    # THEN the second stood aside, and the file was sent once
    assert overlapping[0].status is SweepStatus.held
    assert first.status is SweepStatus.finished
    assert len(swept.sent()) == 1


def test_a_run_that_died_holding_the_sweep_lets_go_when_its_time_is_up(swept: Sweep) -> None:
    _, landed = swept.upload("iris/a.csv", _csv())
    now = landed + GRACE + 1
    swept.s3.put_object(
        Bucket=PROCESSED,
        Key=SWEEP_STATE_KEY,
        Body=json.dumps({"checked_through": now - 600, "held_until": now + 100}).encode(),
    )

    assert swept.run(now=now).status is SweepStatus.held
    assert len(swept.run(now=now + 101).requeued) == 1


def test_a_first_pass_looks_back_one_lookback_and_no_further(
    swept: Sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_LOOKBACK_SECONDS", "3600")
    get_sweep_settings.cache_clear()
    _, landed = swept.upload("iris/a.csv", _csv())

    assert swept.run(now=landed + 3601).requeued == []  # before the sweep's lookback: left alone
    assert swept.sent() == []


def test_a_redelivered_accepted_file_stays_accepted_on_record(
    with_ingest: tuple[Sweep, FakeStack], lambda_context: FakeLambdaContext
) -> None:
    swept, stack = with_ingest
    event = _upload(stack, "iris/a.csv", _csv())
    handle_ingest.handler(event, lambda_context)
    handle_ingest.handler(event, lambda_context)  # ingest finds it a duplicate of itself

    version = json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["versionId"]
    marker = swept.marker("iris/a.csv", version)
    assert marker is not None and marker["status"] == "accepted"


def test_an_acceptance_replaces_an_earlier_outcome() -> None:
    raw = RawObject(RAW, "iris/a.csv", "v1")
    first, later = Outcome.quarantined, Outcome.accepted
    records: dict[str, dict[str, Any]] = {}

    def update(_bucket: str, key: str, change: Any) -> Any:
        records[key] = change(records.get(key))
        return records[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3, "update_json", update)
        assert outcomes.record_outcome(PROCESSED, raw, first) is first
        assert outcomes.record_outcome(PROCESSED, raw, Outcome.duplicate) is first
        assert outcomes.record_outcome(PROCESSED, raw, later) is later


def test_the_handler_runs_a_pass_on_the_scheduled_event(
    swept: Sweep, lambda_context: FakeLambdaContext
) -> None:
    swept.upload("iris/a.csv", _csv())

    result = handle_sweep.handler(load_event("sweep_schedule"), lambda_context)

    # Just landed: inside the grace period, nothing to send yet
    assert (result["status"], result["listed"], result["requeued"]) == ("finished", 1, [])


def test_the_requeued_notification_sample_is_what_the_sweep_sends() -> None:
    # events/ serves `sam local invoke IngestFunction -e` as well: it must not drift from the code
    record = load_event("ingest_sqs_s3_object_requeued")["Records"][0]
    body = json.loads(record["body"])
    (s3_record,) = body["Records"]
    stored = s3_record["s3"]["object"]
    version = s3.ObjectVersion(
        key=unquote_plus(stored["key"]),
        version_id=stored["versionId"],
        etag=stored["eTag"],
        size=stored["size"],
        last_modified=datetime.fromisoformat(s3_record["eventTime"]).timestamp(),
    )

    assert sweep.notification_for(s3_record["s3"]["bucket"]["name"], version) == body
    assert record["messageAttributes"][sweep.REQUEUED_BY_ATTRIBUTE]["stringValue"] == sweep.REQUEUED_BY
