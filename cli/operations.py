"""What the operator's commands do against a deployed stack (LocalStack or AWS, by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.adapters import s3
from common.adapters.stack import stack_outputs
from common.contracts import parse_contract
from common.layout import contract_key

if TYPE_CHECKING:
    from worker.train_model import Reproduction


def put_contract(path: Path, stack_name: str) -> str:
    """Upload after validating, so a typo never reaches the pipeline. Returns the S3 address."""
    text = path.read_bytes()
    contract = parse_contract(text)
    bucket = stack_outputs(stack_name)["ConfigBucketName"]
    key = contract_key(contract.model)
    s3.put_bytes(bucket, key, text, "application/yaml")
    return f"s3://{bucket}/{key}"


def reproduce(model: str, version: str, stack_name: str) -> Reproduction:
    from worker.train_model import reproduce as reproduce_version

    remote = stack_outputs(stack_name)["DvcRemoteUrl"]
    return reproduce_version(model, version, remote)


def champions(tracking_uri: str) -> list[dict[str, Any]]:
    """Each registered model and its champion version, from the tracking server."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    from worker.adapters import tracking

    models = []
    for name in tracking.registered_models():
        champion = tracking.champion(name)
        models.append(
            {
                "name": name,
                "champion": champion.version if champion else None,
                "metrics": tracking.run_metrics(champion.run_id) if champion else {},
            }
        )
    return models
