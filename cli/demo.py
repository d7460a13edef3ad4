"""`arrival demo`: drop the sample dataset into the raw bucket and follow it through the chain."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
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

    def accepted_copy_of(self, model: str, body: bytes) -> dict[str, Any] | None:
        """The accepted dataset these exact bytes were uploaded as before, if any: ingest keeps one
        copy of the same data (a second demo on a running stack uploads the same sample)."""
        found = s3.get_bytes(self.outputs["ProcessedBucketName"], accepted_list_key(model))
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()  # what S3 gives as a simple ETag
        entries = (
            [e for e in json.loads(found[0])["datasets"] if e["source"].get("etag") == md5] if found else []
        )
        return entries[0] if entries else None

    def trainer(self) -> str | None:
        live = ec2.live_instances(TRAINER_ROLE, self.stack_name)
        return live[0] if live else None


def _follow_training(follow: Follower, model: str, key: str) -> None:
    from worker.adapters import tracking

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


def _get_json(url: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The API's answer and headers, or None while it does not answer yet (booting, loading)."""
    request = urllib.request.Request(  # noqa: S310  # the local cloud's own API
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return json.loads(response.read()), dict(response.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _serve_prediction(follow: Follower, model: str, version: str, api_url: str) -> dict[str, Any]:
    """Wait until the serving instance answers with the champion, then ask it for one prediction."""

    def serving_champion() -> dict[str, Any] | None:
        found = _get_json(f"{api_url}/models/{model}")
        return found[0] if found and str(found[0].get("version")) == version else None

    _wait_for(serving_champion, 120, f"the serving API answering with version {version}")
    follow.stage(f"serving instance at {api_url} loaded version {version} (ONNX bundle from S3)")
    with (SAMPLES / "samples" / f"{model}.csv").open() as sample:
        header = sample.readline().strip().split(",")
        values = sample.readline().strip().split(",")
    target = _contract_target(model)
    record = {
        name: _number_or_text(value) for name, value in zip(header, values, strict=True) if name != target
    }
    answer = _wait_for(lambda: _get_json(f"{api_url}/models/{model}/predict", record), 30, "a prediction")
    follow.stage(
        f"prediction from version {answer[1].get('x-model-version')}: {answer[0].get('prediction')!r}"
    )
    return record


def _contract_target(model: str) -> str:
    from common.contracts import parse_contract

    return parse_contract((SAMPLES / f"{model}.yaml").read_bytes()).target


def _number_or_text(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def run_demo(stack_name: str, console: Console, api_url: str | None, model: str = "iris") -> None:
    from worker.adapters import tracking

    follow = Follower(stack_name, console)
    location = put_contract(SAMPLES / f"{model}.yaml", stack_name)
    follow.stage(f"contract for model '{model}' in {location}")

    key = f"{model}/sample-{int(time.time())}.csv"
    body = (SAMPLES / "samples" / f"{model}.csv").read_bytes()
    earlier = follow.accepted_copy_of(model, body)
    version_id = s3.put_bytes(follow.outputs["RawBucketName"], key, body, "text/csv")
    follow.stage(f"uploaded s3://{follow.outputs['RawBucketName']}/{key} (version {version_id})")
    if earlier is not None:
        follow.stage(
            f"the same bytes were accepted before as s3://{earlier['source']['bucket']}/"
            f"{earlier['source']['key']}: ingest drops the copy, so nothing new to train"
        )
    else:
        _follow_training(follow, model, key)
    champion = tracking.champion(model)
    if champion is None:
        raise RuntimeError(f"model {model!r} has no champion: see `arrival status` and the MLflow UI")
    follow.stage(f"champion of '{model}': version {champion.version}")
    console.print_json(
        data={
            "model": model,
            "champion": champion.version,
            "metrics": {
                name: value
                for name, value in tracking.run_metrics(champion.run_id).items()
                if not name.startswith(("timing.", "data.", "train.", "worker."))
            },
            "mlflow_ui": f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/models/{model}",
        }
    )
    if api_url is None:
        console.print("no serving API known (set ARRIVAL_API_URL): skipping the served prediction")
        return
    record = _serve_prediction(follow, model, champion.version, api_url)
    console.print("\nAsk it yourself:")
    console.print(
        f"  curl -s -X POST {api_url}/models/{model}/predict -H 'Content-Type: application/json' "
        f"-d '{json.dumps(record)}'",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"  API docs: {api_url}/docs    MLflow UI: {os.environ.get('MLFLOW_TRACKING_URI', '')}")
