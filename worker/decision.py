"""The trainer's side of a decision: what a training reports, the lineage a version carries, and
rebuilding the bundle of a version whose trainer died before publishing it. The decision itself (the
gate's promotion or rejection, a request for approval, finishing one a crash cut short) is carried
out by the champion's lifecycle, common/champion.py."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.adapters import tracking
from common.adapters.stack import StackResources
from common.adapters.tracking import ModelVersion
from common.bundles import Lineage
from common.champion import Champions
from common.contracts import BUILT_IN_RECIPE, parse_contract
from worker import serving_bundle


@dataclass(frozen=True)
class TrainingOutcome:
    model: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    run_id: str
    trained: bool = True  # False when this data list was already trained (a repeated job)


def lineage_of(run_id: str, accepted: dict[str, Any], tags: dict[str, str], dvc_lock: str) -> Lineage:
    """The whole lineage, from the data list itself: the run's tags hold only what fits in them."""
    return Lineage(
        run_id=run_id,
        sources=source_uris(accepted),
        content_hashes=[entry["content_hash"] for entry in accepted["datasets"]],
        accepted_list_hash=tags.get("accepted_list_hash", ""),
        contract_hash=tags.get("contract_hash", ""),
        dvc_lock=dvc_lock,
        recipe=tags.get("recipe", BUILT_IN_RECIPE),
        recipe_hash=tags.get("recipe_hash", BUILT_IN_RECIPE),
    )


def source_uris(accepted: dict[str, Any]) -> list[str]:
    return [
        f"s3://{entry['source']['bucket']}/{entry['source']['key']}?versionId={entry['source']['version_id']}"
        for entry in accepted["datasets"]
    ]


def publish_from_run(resources: StackResources, version: ModelVersion) -> None:
    """The bundle of a version whose trainer died before publishing it, rebuilt from what its run
    logged: the ONNX model and its check rows, the workspace's contract and DVC lock."""
    run_tags = tracking.run_tags(version.run_id)
    with tempfile.TemporaryDirectory(prefix="arrival-bundle-") as scratch:
        onnx_dir = tracking.download_run_artifacts(version.run_id, "onnx", Path(scratch))
        workspace = tracking.download_run_artifacts(version.run_id, "workspace", Path(scratch))
        contract = parse_contract((workspace / "contract.yaml").read_bytes())
        accepted = json.loads((workspace / "data" / "accepted.json").read_text())
        serving_bundle.publish_from_directory(
            resources.models_bucket,
            contract,
            version.version,
            onnx_dir,
            tracking.run_metrics(version.run_id),
            lineage_of(version.run_id, accepted, run_tags, (workspace / "dvc.lock").read_text()),
        )


def finish_interrupted(
    model: str, list_hash: str, resources: StackResources, recipe_hash: str = BUILT_IN_RECIPE
) -> TrainingOutcome | None:
    """The version a run already made from this data list and recipe, if any (a repeated or
    redelivered job), with its decision carried out now if its trainer died before
    (common/champion.py)."""
    settled = Champions.of_stack(resources).settle_job(
        model, list_hash, lambda version: publish_from_run(resources, version), recipe_hash
    )
    if settled is None:
        return None
    return TrainingOutcome(
        model, settled.version, settled.promoted, settled.reason, {}, settled.run_id, trained=False
    )
