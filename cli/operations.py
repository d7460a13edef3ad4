"""What the operator's commands do against a deployed stack (LocalStack or AWS, by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.adapters import events, s3
from common.adapters.stack import stack_outputs
from common.contracts import parse_contract
from common.layout import contract_key

if TYPE_CHECKING:
    from worker.reproduce import Reproduction


class OperationError(Exception):
    """A one-line reason the command cannot do what was asked, and what to do about it."""


def put_contract(path: Path, stack_name: str) -> str:
    """Upload after validating, so a typo never reaches the pipeline. Returns the S3 address."""
    text = path.read_bytes()
    contract = parse_contract(text)
    # Operators name the file after the prefix they upload data under; a contract declaring
    # another model would be filed, and its data listed, under that other name.
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if name != contract.model:
        raise OperationError(
            f"{path} is named {name!r} but declares model {contract.model!r}; "
            f"rename the file to {contract.model}.yaml or declare model: {name}"
        )
    bucket = stack_outputs(stack_name)["ConfigBucketName"]
    key = contract_key(contract.model)
    s3.put_bytes(bucket, key, text, "application/yaml")
    return f"s3://{bucket}/{key}"


def reproduce(model: str, version: str, stack_name: str) -> Reproduction:
    from worker.reproduce import reproduce as reproduce_version

    remote = stack_outputs(stack_name)["DvcRemoteUrl"]
    return reproduce_version(model, version, remote)


def _models_bucket(stack_name: str) -> str | None:
    try:
        return stack_outputs(stack_name).get("ModelsBucketName")
    except Exception:  # no such stack (yet): status still reports the registry
        return None


def champions(tracking_uri: str, stack_name: str = "arrival") -> list[dict[str, Any]]:
    """Each registered model, its champion version, and the version serving answers with (its
    pointer), flagging any model whose two disagree."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    from worker.adapters import tracking
    from worker.serving_bundle import read_pointer

    bucket = _models_bucket(stack_name)
    models = []
    for name in tracking.registered_models():
        champion = tracking.champion(name)
        pointer = read_pointer(bucket, name) if bucket else None
        champion_version = champion.version if champion else None
        serving_version = pointer.version if pointer else None
        models.append(
            {
                "name": name,
                "champion": champion_version,
                "serving": serving_version,
                "serving_agrees": champion_version == serving_version,
                "metrics": tracking.run_metrics(champion.run_id) if champion else {},
            }
        )
    return models


@dataclass(frozen=True)
class Rollback:
    model: str
    from_version: str
    to_version: str


def rollback(model: str, to_version: str | None, stack_name: str) -> Rollback:
    """Move the champion alias, then the serving pointer, back to an earlier version (by default the
    champion before the current one), and publish `ModelRolledBack` so serving reloads at once."""
    from worker.adapters import tracking
    from worker.serving_bundle import bundle_exists, move_pointer

    outputs = stack_outputs(stack_name)
    current = tracking.champion(model)
    if current is None:
        raise OperationError(f"model {model!r} has no champion to roll back from")
    if to_version is None:
        earlier = [
            v.version for v in tracking.promoted_versions(model) if int(v.version) < int(current.version)
        ]
        if not earlier:
            raise OperationError(
                f"model {model!r} has no champion before version {current.version}; name one with --to"
            )
        to_version = earlier[-1]
    if not tracking.version_exists(model, to_version):
        raise OperationError(f"model {model!r} has no version {to_version!r}")
    if to_version == current.version:
        raise OperationError(f"version {to_version} of {model!r} is already the champion")
    if not bundle_exists(outputs["ModelsBucketName"], model, to_version):
        raise OperationError(
            f"version {to_version} of {model!r} has no serving bundle (it was never promoted, or "
            "predates serving bundles); pick a version that served before"
        )
    reason = f"rolled back from version {current.version}"
    tracking.move_champion(model, to_version)
    move_pointer(outputs["ModelsBucketName"], model, to_version, reason)
    tracking.tag_version(model, to_version, "rollback", reason)
    events.publish(
        outputs["EventBusName"],
        "ModelRolledBack",
        {"name": model, "version": to_version, "from_version": current.version, "reason": reason},
    )
    return Rollback(model, current.version, to_version)


def read_records(text: str, is_csv: bool) -> list[dict[str, Any]]:
    """Records from CSV (a header, then rows; empty cells are missing) or JSON (one record, a list of
    them, or {"records": [...]}). Numbers in CSV are sent as numbers; the API checks the rest."""
    if is_csv:
        return [
            {name: _csv_value(value) for name, value in row.items()}
            for row in csv.DictReader(io.StringIO(text))
        ]
    document = json.loads(text)
    if isinstance(document, dict) and "records" in document:
        document = document["records"]
    return document if isinstance(document, list) else [document]


def _csv_value(value: str | None) -> Any:
    if value is None or value.strip() in {"", "NA"}:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def predict(api_url: str, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST the records to the serving API; a 4xx comes back as an OperationError naming the field."""
    body = json.dumps(records[0] if len(records) == 1 else {"records": records}).encode()
    request = urllib.request.Request(  # noqa: S310  # the URL is the operator's own API
        f"{api_url.rstrip('/')}/models/{model}/predict",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise OperationError(
            f"the API refused the request ({error.code}): {error.read().decode()}"
        ) from error
    except urllib.error.URLError as error:
        raise OperationError(f"cannot reach the serving API at {api_url}: {error.reason}") from error
    return answer


# Each stage's dead-letter queue and the queue its messages are replayed to (stack outputs).
REDRIVE_QUEUES = {
    "ingest": ("IngestDeadLetterQueueUrl", "IngestQueueUrl"),
    "training": ("TrainingDeadLetterQueueUrl", "TrainingQueueUrl"),
}


def redrive(stage: str, stack_name: str) -> int:
    """Moves a stage's dead-lettered messages back to its queue (after the cause is fixed): the
    ingest function takes the files again, a trainer the jobs. Returns how many moved."""
    from common.adapters import sqs

    if stage not in REDRIVE_QUEUES:
        raise OperationError(f"unknown stage {stage!r}; redrive one of: {', '.join(REDRIVE_QUEUES)}")
    outputs = stack_outputs(stack_name)
    dead_letters, queue = (outputs[name] for name in REDRIVE_QUEUES[stage])
    fifo_group = (lambda body: str(json.loads(body)["model"])) if stage == "training" else None
    return sqs.move_all(dead_letters, queue, fifo_group=fifo_group)
