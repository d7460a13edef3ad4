"""Helpers for following files through the deployed pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import INGEST_STACK, LocalCloud
from tests.helpers import QueueDrain, eventually


@dataclass
class Pipeline:
    """One deployed stack, seen from outside as a user sees it."""

    cloud: LocalCloud
    outputs: dict[str, str]
    # Stands in for the trainer (booted only on the training stack): once the reconciler has
    # started an instance, it takes the jobs off the queue and keeps them by model. Like a real
    # trainer, it consumes nothing while no instance runs.
    jobs: QueueDrain

    def __post_init__(self) -> None:
        self.s3 = self.cloud.client("s3")
        self.sqs = self.cloud.client("sqs")
        self.ec2 = self.cloud.client("ec2")

    def put_contract(self, model: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.outputs["ConfigBucketName"], Key=f"contracts/{model}.yaml", Body=body)

    def upload(self, key: str, body: bytes) -> dict[str, Any]:
        response: dict[str, Any] = self.s3.put_object(
            Bucket=self.outputs["RawBucketName"], Key=key, Body=body
        )
        return response

    def _json(self, bucket: str, key: str) -> Any:
        try:
            return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def quarantine_report(self, key: str, timeout: float = 90) -> dict[str, Any]:
        bucket = self.outputs["QuarantineBucketName"]
        report: dict[str, Any] = eventually(
            lambda: self._json(bucket, f"{key}.report.json"), timeout, what=f"a quarantine report for {key}"
        )
        return report

    def accepted(self, model: str) -> dict[str, Any] | None:
        document: dict[str, Any] | None = self._json(
            self.outputs["ProcessedBucketName"], f"{model}/accepted.json"
        )
        return document

    def wait_accepted(self, model: str, count: int, timeout: float = 90) -> dict[str, Any]:
        def enough() -> dict[str, Any] | None:
            document = self.accepted(model)
            return document if document and len(document["datasets"]) >= count else None

        return eventually(enough, timeout, what=f"{count} accepted dataset(s) for {model}")

    def ingest_idle(self) -> bool:
        """No S3 event waiting for or inside the ingest function."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.outputs["IngestQueueUrl"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(int(value) == 0 for value in attributes.values())

    def trainer_instances(self) -> list[dict[str, Any]]:
        reservations = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:arrival:role", "Values": ["trainer"]},
                {"Name": "tag:arrival:stack", "Values": [self.outputs["StackName"]]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        return [instance for reservation in reservations for instance in reservation["Instances"]]


def _pipeline(local_cloud: LocalCloud, stack_name: str, outputs: dict[str, str]) -> Iterator[Pipeline]:
    outputs = {**outputs, "StackName": stack_name}
    pipeline = Pipeline(local_cloud, outputs, jobs=None)  # type: ignore[arg-type]
    pipeline.jobs = QueueDrain(
        local_cloud.client("sqs"),
        outputs["TrainingQueueUrl"],
        key_of=lambda body: body["model"],
        active=lambda: bool(pipeline.trainer_instances()),
    )
    try:
        yield pipeline
    finally:
        pipeline.jobs.stop()


@pytest.fixture(scope="session")
def pipeline(local_cloud: LocalCloud, ingest_stack: dict[str, str]) -> Iterator[Pipeline]:
    yield from _pipeline(local_cloud, INGEST_STACK, ingest_stack)
