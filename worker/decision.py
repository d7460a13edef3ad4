"""Carrying out the gate's decision on a registered version, once and in an order a crash cannot
break: the serving bundle exists before anything points at it; the registry's alias moves, then the
serving pointer; the `promotion`/`rejected` tag marks the decision done; the event goes out, and only
then the `event.published` tag. A trainer that dies on the way (or an event that cannot be sent)
leaves a version whose tags say how far it got, and the next one finishes it (`finish_interrupted`)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.adapters import events
from common.adapters.stack import StackResources
from common.bundles import Lineage
from common.contracts import parse_contract
from worker import serving_bundle
from worker.adapters import tracking


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
    )


def source_uris(accepted: dict[str, Any]) -> list[str]:
    return [
        f"s3://{entry['source']['bucket']}/{entry['source']['key']}?versionId={entry['source']['version_id']}"
        for entry in accepted["datasets"]
    ]


# A version's tag naming the event its decision published: set only once the event is out, so a
# trainer that dies (or an EventBridge call that fails) before then leaves it for the next one to send.
PUBLISHED_TAG = "event.published"


def carry_out(
    resources: StackResources, model: str, version: str, promote: bool, reason: str, detail: dict[str, Any]
) -> None:
    if promote:
        tracking.move_champion(model, version)
        serving_bundle.move_pointer(resources.models_bucket, model, version, reason)
        tracking.tag_version(model, version, "promotion", reason)
    else:
        tracking.tag_version(model, version, "rejected", reason)
    publish_decision(resources, model, version, promote, detail)


def publish_decision(
    resources: StackResources, model: str, version: str, promote: bool, detail: dict[str, Any]
) -> None:
    detail_type = "ModelPromoted" if promote else "ModelRejected"
    events.publish(resources.event_bus_name, detail_type, detail)
    tracking.tag_version(model, version, PUBLISHED_TAG, detail_type)


def _publish_from_run(resources: StackResources, version: tracking.ModelVersion) -> None:
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


def _event_detail(model: str, version: tracking.ModelVersion, reason: str) -> dict[str, Any]:
    run_tags = tracking.run_tags(version.run_id)
    return {
        "name": model,
        "version": version.version,
        "metrics": tracking.run_metrics(version.run_id),
        "champion_version": version.tags.get("gate.champion_version") or None,
        "reason": reason,
        "run_id": version.run_id,
        "lineage": json.loads(run_tags.get("lineage.sources", "[]")),
        "lineage_files": int(run_tags.get("lineage.files", "0")),
    }


def finish_interrupted(model: str, list_hash: str, resources: StackResources) -> TrainingOutcome | None:
    """The version a run already made from this data list, if any (a repeated or redelivered job).
    If its trainer died after registering it but before the decision was carried out (the version
    carries the decision in its tags), it is carried out now; if the decision was carried out but its
    event never went out, the event is sent now."""
    existing = tracking.versions_with_tag(model, "accepted_list_hash", list_hash)
    if not existing:
        return None
    version = existing[0]
    promote, reason = version.tags.get("gate.decision") == "promote", version.tags.get("gate.reason", "")
    if "promotion" in version.tags or "rejected" in version.tags:
        promote = "promotion" in version.tags
        reason = version.tags.get("promotion") or version.tags.get("rejected") or reason
        if PUBLISHED_TAG not in version.tags:
            detail = _event_detail(model, version, reason)
            publish_decision(resources, model, version.version, promote, detail)
    else:
        champion = tracking.champion(model)
        if promote and champion is not None and int(champion.version) > int(version.version):
            promote, reason = False, f"champion moved to version {champion.version} meanwhile"
        if promote and not serving_bundle.bundle_exists(resources.models_bucket, model, version.version):
            _publish_from_run(resources, version)
        # The dead trainer's run is closed before the event, so whoever the event wakes sees it done.
        tracking.finish_run_if_running(version.run_id)
        carry_out(resources, model, version.version, promote, reason, _event_detail(model, version, reason))
    return TrainingOutcome(model, version.version, promote, reason, {}, version.run_id, trained=False)
