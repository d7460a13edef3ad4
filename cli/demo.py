"""`arrival demo`: drop the sample dataset into the raw bucket and follow it through the chain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.exceptions import ClientError
from rich.console import Console

from cli.operations import put_contract
from localcloud.deploy import stack_outputs

SAMPLES = Path(__file__).resolve().parent.parent / "contracts"
T = TypeVar("T")


def _wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)
    return result


class Follower:
    def __init__(self, stack_name: str, console: Console) -> None:
        self.session = boto3.session.Session()
        self.outputs = stack_outputs(self.session.client("cloudformation"), stack_name)
        self.stack_name = stack_name
        self.s3 = self.session.client("s3")
        self.console = console
        self.started = time.monotonic()

    def stage(self, message: str) -> None:
        self.console.print(f"[green]{time.monotonic() - self.started:6.2f} s[/green]  {message}")

    def accepted_entry(self, model: str, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(
                Bucket=self.outputs["ProcessedBucketName"], Key=f"{model}/accepted.json"
            )
        except ClientError:
            return None
        entries = [
            entry for entry in json.loads(body["Body"].read())["datasets"] if entry["source"]["key"] == key
        ]
        return entries[0] if entries else None

    def trainer(self) -> dict[str, Any] | None:
        ec2: Any = self.session.client("ec2")
        reservations = ec2.describe_instances(
            Filters=[
                {"Name": "tag:arrival:role", "Values": ["trainer"]},
                {"Name": "tag:arrival:stack", "Values": [self.stack_name]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        instances = [instance for reservation in reservations for instance in reservation["Instances"]]
        return instances[0] if instances else None


def run_demo(stack_name: str, console: Console, model: str = "iris") -> None:
    from common.adapters import tracking

    follow = Follower(stack_name, console)
    location = put_contract(SAMPLES / f"{model}.yaml", stack_name)
    follow.stage(f"contract for model '{model}' in {location}")

    key = f"{model}/sample-{int(time.time())}.csv"
    body = (SAMPLES / "samples" / f"{model}.csv").read_bytes()
    put = follow.s3.put_object(Bucket=follow.outputs["RawBucketName"], Key=key, Body=body)
    follow.stage(f"uploaded s3://{follow.outputs['RawBucketName']}/{key} (version {put['VersionId']})")

    entry = _wait_for(lambda: follow.accepted_entry(model, key), 120, "ingest")
    follow.stage(
        f"ingest Lambda: valid against the contract; {entry['rows']} rows "
        f"({entry['duplicate_rows_dropped']} duplicates dropped) -> "
        f"s3://{follow.outputs['ProcessedBucketName']}/{entry['processed_key']}"
    )
    follow.stage(
        f"training job queued on {follow.outputs['TrainingQueueUrl'].rsplit('/', 1)[-1]} (group '{model}')"
    )
    instance = _wait_for(follow.trainer, 60, "a trainer instance")
    follow.stage(
        f"trainer {instance['InstanceId']} running (started by the reconciler, booted by the local EC2 agent)"
    )
    run = _wait_for(lambda: tracking.latest_run(model), 120, "an MLflow run")
    follow.stage(f"MLflow run {run.run_id} is {run.status} (DVC: prepare, train, evaluate)")

    decision = _wait_for(lambda: tracking.decided_version_with_source(model, key), 300, "a judged version")
    verdict = decision.tags.get("promotion") or decision.tags.get("rejected")
    follow.stage(f"version {decision.version} registered; gate: {verdict}")
    champion = tracking.champion(model)
    follow.stage(f"champion of '{model}': version {champion.version if champion else None}")
    console.print_json(
        data={
            "model": model,
            "champion": champion.version if champion else None,
            "metrics": {
                name: value
                for name, value in tracking.run_metrics(decision.run_id).items()
                if not name.startswith(("timing.", "data."))
            },
            "mlflow_ui": f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/models/{model}",
        }
    )
