"""The ingest handler in-process against moto: parsing, the accept/quarantine paths, exactly-once.
(The same paths run through LocalStack in tests/e2e.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from common import ingest, outcomes, tabular
from common.adapters import ec2, events, s3, sqs
from common.settings import get_pipeline_settings
from handlers import handle_ingest
from tests import datasets
from tests.unit.conftest import FakeLambdaContext, load_event

RAW = "arrival-raw-000000000000-us-east-1"


@dataclass
class FakeStack:
    s3: Any
    sqs: Any
    ec2: Any
    queue_url: str

    def event_for(self, key: str, version_id: str | None = None) -> dict[str, Any]:
        event = load_event("ingest_sqs_s3_object_created")
        body = json.loads(event["Records"][0]["body"])
        body["Records"][0]["s3"]["object"]["key"] = key.replace(" ", "+")
        if version_id:
            body["Records"][0]["s3"]["object"]["versionId"] = version_id
        event["Records"][0]["body"] = json.dumps(body)
        return event

    def accepted(self, model: str) -> dict[str, Any] | None:
        try:
            accepted: dict[str, Any] = json.loads(
                self.s3.get_object(Bucket="unit-processed", Key=f"{model}/accepted.json")["Body"].read()
            )
            return accepted
        except self.s3.exceptions.NoSuchKey:
            return None

    def jobs(self) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        return [json.loads(message["Body"]) for message in messages]


def _clear_clients() -> None:
    for cached in (s3.s3_client, sqs.sqs_client, ec2.ec2_client, events.events_client, get_pipeline_settings):
        cached.cache_clear()


@pytest.fixture
def stack(aws_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[FakeStack]:
    _clear_clients()
    with mock_aws():
        s3_client = boto3.client("s3")
        for bucket in (RAW, "unit-processed", "unit-quarantine", "unit-config"):
            s3_client.create_bucket(Bucket=bucket)
        s3_client.put_bucket_versioning(Bucket=RAW, VersioningConfiguration={"Status": "Enabled"})
        sqs_client = boto3.client("sqs")
        queue_url = sqs_client.create_queue(QueueName="training.fifo", Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        boto3.client("events").create_event_bus(Name="bus")
        ec2_client = boto3.client("ec2")
        image = ec2_client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        template = ec2_client.create_launch_template(
            LaunchTemplateName="trainer", LaunchTemplateData={"ImageId": image, "UserData": "ZWNobw=="}
        )["LaunchTemplate"]["LaunchTemplateId"]
        for name, value in {
            "ARRIVAL_STACK_NAME": "unit",
            "PROCESSED_BUCKET": "unit-processed",
            "QUARANTINE_BUCKET": "unit-quarantine",
            "CONFIG_BUCKET": "unit-config",
            "TRAINING_QUEUE_URL": queue_url,
            "TRAINER_LAUNCH_TEMPLATE_ID": template,
            "EVENT_BUS_NAME": "bus",
            "INGEST_SCRATCH_DIR": str(tmp_path),
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "Arrival",
            "AWS_LAMBDA_FUNCTION_NAME": "arrival-IngestFunction",
        }.items():
            monkeypatch.setenv(name, value)
        s3_client.put_object(
            Bucket="unit-config", Key="contracts/iris.yaml", Body=datasets.contract_yaml("iris", "iris")
        )
        yield FakeStack(s3_client, sqs_client, ec2_client, queue_url)
    _clear_clients()


def _upload(stack: FakeStack, key: str, body: bytes) -> dict[str, Any]:
    version = stack.s3.put_object(Bucket=RAW, Key=key, Body=body)["VersionId"]
    return stack.event_for(key, version)


def test_a_valid_file_is_accepted_dispatched_and_gets_a_trainer(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    event = _upload(stack, "iris/iris data.csv", datasets.to_csv(datasets.iris_frame(50)))

    response = handle_ingest.handler(event, lambda_context)

    assert response == {"batchItemFailures": []}
    accepted = stack.accepted("iris")
    assert accepted is not None
    assert [entry["source"]["key"] for entry in accepted["datasets"]] == ["iris/iris data.csv"]
    assert stack.jobs() == [{"model": "iris"}]
    assert len(ec2.live_instances("trainer", "unit")) == 1


def test_a_duplicate_delivery_and_a_renamed_copy_change_nothing(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    body = datasets.to_csv(datasets.iris_frame(50))
    first = _upload(stack, "iris/a.csv", body)
    handle_ingest.handler(first, lambda_context)
    stack.jobs()

    handle_ingest.handler(first, lambda_context)
    handle_ingest.handler(_upload(stack, "iris/b.csv", body), lambda_context)

    accepted = stack.accepted("iris")
    assert accepted is not None
    assert len(accepted["datasets"]) == 1
    assert stack.jobs() == []
    assert len(ec2.live_instances("trainer", "unit")) == 1


def test_an_invalid_file_is_quarantined_not_failed(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    event = _upload(stack, "iris/bad.csv", b"a,b\n1,2\n")

    response = handle_ingest.handler(event, lambda_context)

    assert response == {"batchItemFailures": []}
    report = json.loads(
        stack.s3.get_object(Bucket="unit-quarantine", Key="iris/bad.csv.report.json")["Body"].read()
    )
    assert report["rule"] == "missing_columns"
    assert stack.accepted("iris") is None
    assert stack.jobs() == []


@pytest.mark.parametrize("case", list(datasets.BAD_FILES), ids=lambda case: case.replace(" ", "-"))
def test_a_bad_file_of_each_rule_is_quarantined_with_its_copy_and_never_dispatched(
    stack: FakeStack, lambda_context: FakeLambdaContext, case: str
) -> None:
    rule, make_body, limits = datasets.BAD_FILES[case]
    stack.s3.put_object(
        Bucket="unit-config", Key="contracts/iris.yaml", Body=datasets.contract_yaml("iris", "iris", **limits)
    )
    key, body = datasets.bad_file_key("iris", case), make_body()

    response = handle_ingest.handler(_upload(stack, key, body), lambda_context)

    assert response == {"batchItemFailures": []}
    report = json.loads(
        stack.s3.get_object(Bucket="unit-quarantine", Key=f"{key}.report.json")["Body"].read()
    )
    assert report["rule"] == rule, report
    assert report["violations"][0]["detail"]
    assert stack.s3.head_object(Bucket="unit-quarantine", Key=key)["ContentLength"] == len(body)
    assert stack.accepted("iris") is None
    assert stack.jobs() == []


def test_a_record_that_fails_is_reported_alone(stack: FakeStack, lambda_context: FakeLambdaContext) -> None:
    # GIVEN a notification for a file whose model's contract does not parse, and an s3:TestEvent
    stack.s3.put_object(Bucket="unit-config", Key="contracts/broken.yaml", Body=b"model: [broken")
    event = _upload(stack, "broken/data.csv", datasets.to_csv(datasets.iris_frame(50)))

    response = handle_ingest.handler(event, lambda_context)

    # THEN only that record is returned for retry; the test event is not
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_two_models_accepting_the_same_bytes_each_get_a_job(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    # FIFO deduplication spans the queue: the id must tell the models apart.
    stack.s3.put_object(
        Bucket="unit-config", Key="contracts/iris-b.yaml", Body=datasets.contract_yaml("iris", "iris-b")
    )
    body = datasets.to_csv(datasets.iris_frame(50))

    handle_ingest.handler(_upload(stack, "iris/a.csv", body), lambda_context)
    handle_ingest.handler(_upload(stack, "iris-b/a.csv", body), lambda_context)

    assert sorted(job["model"] for job in stack.jobs()) == ["iris", "iris-b"]


def _fail_if_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    def conversion(*_: Any, **__: Any) -> Any:
        raise AssertionError("the file was converted again")

    monkeypatch.setattr(tabular, "csv_chunks", conversion)


def test_a_redelivery_and_a_renamed_copy_are_duplicates_without_conversion(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a file that was accepted
    body = datasets.to_csv(datasets.iris_frame(50))
    first = stack.s3.put_object(Bucket=RAW, Key="iris/a.csv", Body=body)["VersionId"]
    handle_ingest.handler(stack.event_for("iris/a.csv", first), lambda_context)
    copy = stack.s3.put_object(Bucket=RAW, Key="iris/copy.csv", Body=body)["VersionId"]

    # WHEN S3 delivers its event again, and the same bytes arrive under another name
    _fail_if_converted(monkeypatch)
    again = ingest.ingest_object(outcomes.RawObject(RAW, "iris/a.csv", first))
    renamed = ingest.ingest_object(outcomes.RawObject(RAW, "iris/copy.csv", copy))

    # THEN both are recognised as duplicates before any conversion
    assert again.outcome is outcomes.Outcome.duplicate
    assert renamed.outcome is outcomes.Outcome.duplicate
    assert again.content_hash == renamed.content_hash


def test_a_contract_that_names_another_model_is_refused(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN contracts/foo.yaml that declares model iris
    stack.s3.put_object(
        Bucket="unit-config", Key="contracts/foo.yaml", Body=datasets.contract_yaml("iris", "iris")
    )

    # WHEN a valid iris file lands under foo/
    handle_ingest.handler(
        _upload(stack, "foo/data.csv", datasets.to_csv(datasets.iris_frame(50))), lambda_context
    )

    # THEN it is quarantined for want of foo's contract, and iris's list is untouched
    report = json.loads(
        stack.s3.get_object(Bucket="unit-quarantine", Key="foo/data.csv.report.json")["Body"].read()
    )
    assert report["rule"] == "no_contract"
    assert "the contract at contracts/foo.yaml declares model 'iris'" in report["violations"][0]["detail"]
    assert stack.accepted("iris") is None
    assert stack.accepted("foo") is None
    assert stack.jobs() == []


def _published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Records each event the pipeline publishes, and publishes it. (moto routes bus events to
    targets only with jsonpath-ng installed, which arrival does not need.)"""
    publish = events.publish
    published: list[tuple[str, dict[str, Any]]] = []

    def spy(
        bus_name: str, detail_type: str, detail: dict[str, Any], resources: list[str] | None = None
    ) -> None:
        published.append((detail_type, detail))
        publish(bus_name, detail_type, detail, resources)

    monkeypatch.setattr(events, "publish", spy)
    return published


def test_a_redelivered_bad_file_is_quarantined_once(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a bad file that was quarantined
    published = _published(monkeypatch)
    event = _upload(stack, "iris/bad.csv", b"a,b\n1,2\n")
    handle_ingest.handler(event, lambda_context)

    # WHEN S3 delivers its event again
    response = handle_ingest.handler(event, lambda_context)

    # THEN one DatasetQuarantined event went out, and the report is still in place
    assert response == {"batchItemFailures": []}
    assert [(kind, detail["rule"]) for kind, detail in published] == [
        ("DatasetQuarantined", "missing_columns")
    ]
    report = stack.s3.get_object(Bucket="unit-quarantine", Key="iris/bad.csv.report.json")
    assert json.loads(report["Body"].read())["rule"] == "missing_columns"


def test_a_new_version_of_a_quarantined_key_is_quarantined_again(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = _published(monkeypatch)
    handle_ingest.handler(_upload(stack, "iris/bad.csv", b"a,b\n1,2\n"), lambda_context)

    handle_ingest.handler(_upload(stack, "iris/bad.csv", b"a,c\n1,2\n"), lambda_context)

    assert [kind for kind, _ in published] == ["DatasetQuarantined"] * 2


def test_a_lineage_that_failed_to_write_is_written_on_redelivery(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the first attempt dies while writing the dataset's lineage
    put_json = s3.put_json
    failures: list[str] = []

    def dies_on_lineage(bucket: str, key: str, document: Any) -> None:
        if key.endswith(".lineage.json") and not failures:
            failures.append(key)
            raise ConnectionError("the Lambda died here")
        put_json(bucket, key, document)

    monkeypatch.setattr(s3, "put_json", dies_on_lineage)
    event = _upload(stack, "iris/a.csv", datasets.to_csv(datasets.iris_frame(50)))
    first = handle_ingest.handler(event, lambda_context)
    assert first == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}

    # WHEN SQS delivers the record again
    handle_ingest.handler(event, lambda_context)

    # THEN the accepted dataset has its lineage beside it
    accepted = stack.accepted("iris")
    assert accepted is not None
    [entry] = accepted["datasets"]
    lineage = stack.s3.get_object(
        Bucket="unit-processed", Key=f"iris/data/{entry['content_hash']}.lineage.json"
    )
    assert json.loads(lineage["Body"].read())["source"]["key"] == "iris/a.csv"
    assert stack.jobs() == [{"model": "iris"}]
