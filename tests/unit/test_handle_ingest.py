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
            return json.loads(
                self.s3.get_object(Bucket="unit-processed", Key=f"{model}/accepted.json")["Body"].read()
            )  # type: ignore[no-any-return]
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


def test_a_record_that_fails_is_reported_alone(stack: FakeStack, lambda_context: FakeLambdaContext) -> None:
    # GIVEN a notification for an object that does not exist, and an s3:TestEvent
    event = stack.event_for("iris/vanished.csv")

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
