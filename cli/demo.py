"""`arrival demo`: drop the sample dataset into the raw bucket and follow it through the chain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from cli.operations import put_contract
from common.adapters import ec2, s3
from common.adapters.stack import stack_outputs
from common.layout import accepted_list_key
from common.reconcile import TRAINER_ROLE

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
    """Watches the deployed stack from outside, as a user would, through arrival's adapters."""

    def __init__(self, stack_name: str, console: Console) -> None:
        self.outputs = stack_outputs(stack_name)
        self.stack_name = stack_name
        self.console = console
        self.started = time.monotonic()

    def stage(self, message: str) -> None:
        self.console.print(f"[green]{time.monotonic() - self.started:6.2f} s[/green]  {message}")

    def accepted_entry(self, model: str, key: str) -> dict[str, Any] | None:
        found = s3.get_bytes(self.outputs["ProcessedBucketName"], accepted_list_key(model))
        entries = (
            [entry for entry in json.loads(found[0])["datasets"] if entry["source"]["key"] == key]
            if found
            else []
        )
        return entries[0] if entries else None

    def trainer(self) -> str | None:
        live = ec2.live_instances(TRAINER_ROLE, self.stack_name)
        return live[0] if live else None


def run_demo(stack_name: str, console: Console, model: str = "iris") -> None:
    from worker.adapters import tracking

    follow = Follower(stack_name, console)
    location = put_contract(SAMPLES / f"{model}.yaml", stack_name)
    follow.stage(f"contract for model '{model}' in {location}")

    key = f"{model}/sample-{int(time.time())}.csv"
    body = (SAMPLES / "samples" / f"{model}.csv").read_bytes()
    version_id = s3.put_bytes(follow.outputs["RawBucketName"], key, body, "text/csv")
    follow.stage(f"uploaded s3://{follow.outputs['RawBucketName']}/{key} (version {version_id})")

    entry = _wait_for(lambda: follow.accepted_entry(model, key), 120, "ingest")
    follow.stage(
        f"ingest Lambda: valid against the contract; {entry['rows']} rows "
        f"({entry['duplicate_rows_dropped']} duplicates dropped) -> "
        f"s3://{follow.outputs['ProcessedBucketName']}/{entry['processed_key']}"
    )
    follow.stage(
        f"training job queued on {follow.outputs['TrainingQueueUrl'].rsplit('/', 1)[-1]} (group '{model}')"
    )
    instance_id = _wait_for(follow.trainer, 60, "a trainer instance")
    follow.stage(f"trainer {instance_id} running (started by the reconciler, booted by the local EC2 agent)")
    run = _wait_for(lambda: tracking.run_with_source(model, key), 120, "an MLflow run")
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
                if not name.startswith(("timing.", "data.", "train.", "worker."))
            },
            "mlflow_ui": f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/models/{model}",
        }
    )
