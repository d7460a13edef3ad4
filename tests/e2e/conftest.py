"""Helpers for following files through the deployed pipeline."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from cli.main import app
from localcloud.settings import get_local_cloud_settings
from tests.conftest import (
    INGEST_STACK,
    SECOND_TRAINING_STACK,
    TRAINING_STACK,
    LocalCloud,
    tracking_server_lock,
)
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


class Chain:
    def __init__(self, cloud: LocalCloud, outputs: dict[str, str], stack: str = TRAINING_STACK) -> None:
        self.cloud, self.outputs, self.stack = cloud, outputs, stack
        self.s3, self.ec2 = cloud.client("s3"), cloud.client("ec2")
        self.mlflow = MlflowClient(cloud.settings.mlflow_url)
        # Every pipeline event, kept by (detail-type, model).
        self.events = QueueDrain(
            cloud.client("sqs"),
            outputs["PipelineEventsQueueUrl"],
            key_of=lambda event: (
                event["detail-type"],
                event["detail"].get("name") or event["detail"].get("model"),
            ),
        )

    def dead_letter_reason(self, model: str, timeout: float = 240) -> str:
        """The failure reason of the model's job once it is in the training dead-letter queue (left
        there: peeked with no visibility timeout)."""
        sqs = self.cloud.client("sqs")

        def dead_lettered() -> str | None:
            for message in sqs.receive_message(
                QueueUrl=self.outputs["TrainingDeadLetterQueueUrl"],
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                VisibilityTimeout=0,
            ).get("Messages", []):
                if json.loads(message["Body"])["model"] == model:
                    return str(message["MessageAttributes"]["failure_reason"]["StringValue"])
            return None

        return eventually(dead_lettered, timeout, interval=0, what=f"{model}'s job in the dead-letter queue")

    def put_contract(self, model: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.outputs["ConfigBucketName"], Key=f"contracts/{model}.yaml", Body=body)

    def upload(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.outputs["RawBucketName"], Key=key, Body=body)

    def api_key(self) -> str:
        """The serving API's key, from the stack's secret, as an operator reads it."""
        secrets = self.cloud.client("secretsmanager")
        return str(secrets.get_secret_value(SecretId=self.outputs["ServingApiKeySecretArn"])["SecretString"])

    def versions(self, model: str) -> list[Any]:
        try:
            return sorted(
                self.mlflow.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version)
            )
        except Exception:  # the registered model does not exist yet
            return []

    def wait_versions(self, model: str, count: int, timeout: float = 240) -> list[Any]:
        def enough() -> list[Any] | None:
            found = self.versions(model)
            decided = [v for v in found if "promotion" in v.tags or "rejected" in v.tags]
            return found if len(decided) >= count else None

        return eventually(enough, timeout, interval=0.5, what=f"{count} decided version(s) of {model}")

    def requeue(self, model: str, deduplication_id: str) -> None:
        """The model's job comes back, as after a dead trainer's lease ran out; the reconciler runs."""
        self.cloud.client("sqs").send_message(
            QueueUrl=self.outputs["TrainingQueueUrl"],
            MessageBody=json.dumps({"model": model}),
            MessageGroupId=model,
            MessageDeduplicationId=deduplication_id,
        )
        self.cloud.client("lambda").invoke(FunctionName=self.outputs["ReconcileFunctionName"])

    def replace_stale_trainers(self, stale: set[str]) -> bool:
        """Runs the reconciler once (as its schedule would); true once a trainer other than the
        `stale` ones is live and none of those is."""
        self.cloud.client("lambda").invoke(FunctionName=self.outputs["ReconcileFunctionName"])
        live = {instance["InstanceId"] for instance in self.trainers()}
        return bool(live) and not live & stale

    def wait_running_run(self, model: str, timeout: float = 180) -> Any:
        """The model's first MLflow run once it is RUNNING (its trainer is mid-training)."""
        experiment = eventually(
            lambda: self.mlflow.get_experiment_by_name(model), timeout, interval=0.1, what="the experiment"
        )
        return eventually(
            lambda: self.mlflow.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"),
            timeout,
            interval=0.1,
            what="a RUNNING run",
        )[0]

    def champion(self, model: str) -> str | None:
        try:
            return str(self.mlflow.get_model_version_by_alias(model, "champion").version)
        except Exception:
            return None

    def trainers(self, states: tuple[str, ...] = ("pending", "running")) -> list[dict[str, Any]]:
        reservations = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:arrival:role", "Values": ["trainer"]},
                {"Name": "tag:arrival:stack", "Values": [self.stack]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )["Reservations"]
        return [instance for reservation in reservations for instance in reservation["Instances"]]


@pytest.fixture(scope="session")
def chain(local_cloud: LocalCloud, training_stack: dict[str, str]) -> Iterator[Chain]:
    chain = Chain(local_cloud, training_stack)
    yield chain
    chain.events.stop()


@pytest.fixture(scope="session")
def second_chain(local_cloud: LocalCloud, second_training_stack: dict[str, str]) -> Iterator[Chain]:
    """The second training stack's chain: trainers and the registry, no API (tests/conftest.py)."""
    chain = Chain(local_cloud, second_training_stack, SECOND_TRAINING_STACK)
    yield chain
    chain.events.stop()


@pytest.fixture(autouse=True)
def _tracking_server_shared(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test of either training lane holds the tracking server shared while its trainings use it;
    one that stops or freezes it takes it alone for the outage (`tracking_server_alone`)."""
    fixtures = set(request.fixturenames)
    if not fixtures & {"training_stack", "second_training_stack"} or "tracking_server_alone" in fixtures:
        yield
        return
    with tracking_server_lock(request.config, fcntl.LOCK_SH):
        yield


@pytest.fixture(scope="session")
def lambda_api(local_cloud: LocalCloud, chain: Chain) -> Iterator[httpx.Client]:
    """The same app through Mangum, behind LocalStack's API Gateway (REST API, stage Prod); every
    request carries the stack's API key."""
    base = f"{local_cloud.endpoint_url}/_aws/execute-api/{chain.outputs['ServingApiId']}/Prod"
    client = httpx.Client(base_url=base, headers={"x-api-key": chain.api_key()}, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def api(local_cloud: LocalCloud, chain: Chain) -> Iterator[httpx.Client]:
    """The training stack's EC2 serving instance's API, once its process answers; every request
    carries the stack's API key."""
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{local_cloud.settings.api_port}",
        headers={"x-api-key": chain.api_key()},
        timeout=30,
    )

    def healthy() -> bool:
        try:
            return client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    eventually(healthy, 120, what="the serving instance answering /health")
    yield client
    client.close()


def cloud_settings(cloud: LocalCloud) -> dict[str, str]:
    """The settings that point the `arrival` CLI at this session's local cloud, as `make demo`'s
    defaults point it at the user's."""
    return {
        "ARRIVAL_STATE_DIR": str(cloud.settings.state_dir),
        "ARRIVAL_AWS_PORT": str(cloud.settings.aws_port),
        "ARRIVAL_MLFLOW_PORT": str(cloud.settings.mlflow_port),
        "ARRIVAL_API_PORT": str(cloud.settings.api_port),
    }


def arrival(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """Run the `arrival` CLI in-process against this session's local cloud."""
    for name, value in cloud_settings(cloud).items():
        monkeypatch.setenv(name, value)
    get_local_cloud_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_local_cloud_settings.cache_clear()
