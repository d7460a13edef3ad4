"""Carrying out the gate's decision on a registered version, once and in an order a crash cannot
break: the serving bundle exists before anything points at it; the registry's alias moves, then the
serving pointer; the `promotion`/`rejected` tag marks the decision done; the event goes out, and only
then the `event.published` tag. A trainer that dies on the way (or an event that cannot be sent)
leaves a version whose tags say how far it got, and the next one finishes it (`finish_interrupted`).

With manual approval (the contract's `training.approval`), a version the gate passes is not promoted:
its bundle is published, older versions still waiting are tagged `superseded` (and lose
`awaiting_approval`), then `awaiting_approval` marks the decision done, `ApprovalRequested` goes out,
then `event.published`. A person's approval or rejection (cli/approval.py) is carried out in the
gate's order by `carry_out_approval`, and a crash in it is finished the same way."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.adapters import events, tracking
from common.adapters.stack import StackResources
from common.bundles import Lineage
from common.contracts import parse_contract
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
    )


def source_uris(accepted: dict[str, Any]) -> list[str]:
    return [
        f"s3://{entry['source']['bucket']}/{entry['source']['key']}?versionId={entry['source']['version_id']}"
        for entry in accepted["datasets"]
    ]


# A version's tag naming the event its decision published: set only once the event is out, so a
# trainer that dies (or an EventBridge call that fails) before then leaves it for the next one to send.
PUBLISHED_TAG = "event.published"


# A version the gate passed under manual approval carries this tag (valued with the gate's reason)
# until a person approves or rejects it, or a newer passing version supersedes it.
AWAITING_TAG = "awaiting_approval"
SUPERSEDED_TAG = "superseded"
# The contract's `training.approval` when the gate judged the version: a dead trainer's successor
# finishes the decision under the mode it was made in, whatever the contract says by then.
APPROVAL_MODE_TAG = "gate.approval"
APPROVED_BY = "approved by "
# What ApprovalRequested carries (the fields agreed for it; no lineage).
APPROVAL_REQUEST_KEYS = ("name", "version", "metrics", "champion_version", "reason", "run_id")
# The tag that marks each decision done, and the event that announces it. The first one a version
# carries settles its state: a crash between tagging a person's decision and removing
# `awaiting_approval` leaves both.
DECISIONS = (
    ("promotion", "ModelPromoted"),
    ("rejected", "ModelRejected"),
    (AWAITING_TAG, "ApprovalRequested"),
)


def carry_out(
    resources: StackResources,
    model: str,
    version: str,
    promote: bool,
    reason: str,
    detail: dict[str, Any],
    approval: str = "auto",
) -> bool:
    """Returns whether the version was promoted (not when it waits for a person's approval)."""
    if promote and approval == "manual":
        request_approval(resources, model, version, reason, detail)
        return False
    if promote:
        tracking.move_champion(model, version)
        serving_bundle.move_pointer(resources.models_bucket, model, version, reason)
        tracking.tag_version(model, version, "promotion", reason)
    else:
        tracking.tag_version(model, version, "rejected", reason)
    publish_decision(resources, model, version, promote, detail)
    return promote


def publish_decision(
    resources: StackResources, model: str, version: str, promote: bool, detail: dict[str, Any]
) -> None:
    detail_type = "ModelPromoted" if promote else "ModelRejected"
    events.publish(resources.event_bus_name, detail_type, detail)
    tracking.tag_version(model, version, PUBLISHED_TAG, detail_type)


def waiting_versions(model: str) -> list[tracking.ModelVersion]:
    """The versions awaiting approval, oldest first: not one a crash left tagged after it was
    superseded or decided."""
    settled = (SUPERSEDED_TAG, "promotion", "rejected")
    return [
        version
        for version in tracking.versions_of(model)
        if AWAITING_TAG in version.tags and not any(tag in version.tags for tag in settled)
    ]


def request_approval(
    resources: StackResources, model: str, version: str, reason: str, detail: dict[str, Any]
) -> None:
    """Older waiting versions are superseded before this one is tagged waiting: a crash in between
    leaves this one undecided, and whoever finishes it supersedes again (a no-op by then)."""
    for older in waiting_versions(model):
        if int(older.version) < int(version):
            superseded = f"superseded by version {version}, which passed the gate after it"
            tracking.tag_version(model, older.version, SUPERSEDED_TAG, superseded)
            tracking.untag_version(model, older.version, AWAITING_TAG)
    tracking.tag_version(model, version, AWAITING_TAG, reason)
    publish_approval_request(resources, model, version, detail)


def publish_approval_request(
    resources: StackResources, model: str, version: str, detail: dict[str, Any]
) -> None:
    request = {key: detail.get(key) for key in APPROVAL_REQUEST_KEYS}
    events.publish(resources.event_bus_name, "ApprovalRequested", request)
    tracking.tag_version(model, version, PUBLISHED_TAG, "ApprovalRequested")


def carry_out_approval(
    resources: StackResources, model: str, version: str, approved: bool, reason: str, detail: dict[str, Any]
) -> None:
    """A person's decision on a waiting version, in the gate's order (its bundle was published
    before it was tagged waiting); `awaiting_approval` goes once the decision's own tag is set."""
    if approved:
        tracking.move_champion(model, version)
        serving_bundle.move_pointer(resources.models_bucket, model, version, reason)
        tracking.tag_version(model, version, "promotion", reason)
    else:
        tracking.tag_version(model, version, "rejected", reason)
    tracking.untag_version(model, version, AWAITING_TAG)
    publish_decision(resources, model, version, approved, detail)


def decided_event(version: tracking.ModelVersion) -> tuple[str, str] | None:
    """The decision tag a version carries and its event's detail-type, or None while undecided."""
    return next(((tag, kind) for tag, kind in DECISIONS if tag in version.tags), None)


def announce(
    resources: StackResources, version: tracking.ModelVersion, tag: str, detail: dict[str, Any]
) -> None:
    """Sends the event of a decision (its tag in DECISIONS) whose event never went out."""
    if tag == AWAITING_TAG:
        publish_approval_request(resources, version.name, version.version, detail)
    else:
        publish_decision(resources, version.name, version.version, tag == "promotion", detail)


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


def event_detail(
    model: str, version: tracking.ModelVersion, reason: str, champion_version: str | None = None
) -> dict[str, Any]:
    """A decision's event detail, from what the version's run logged. The champion it is compared
    with is the gate's unless named (a person's approval replaces the champion of that moment)."""
    run_tags = tracking.run_tags(version.run_id)
    return {
        "name": model,
        "version": version.version,
        "metrics": tracking.run_metrics(version.run_id),
        "champion_version": champion_version or version.tags.get("gate.champion_version") or None,
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
    decided = decided_event(version)
    if SUPERSEDED_TAG in version.tags and (decided is None or decided[0] == AWAITING_TAG):
        # Nothing to announce: the newer version's request is the news. A crash may have left the
        # waiting tag behind.
        tracking.untag_version(model, version.version, AWAITING_TAG)
        promote, reason = False, version.tags[SUPERSEDED_TAG]
    elif decided is not None:
        tag, detail_type = decided
        promote, reason = tag == "promotion", version.tags[tag]
        if version.tags.get(PUBLISHED_TAG) != detail_type:
            announce(resources, version, tag, event_detail(model, version, reason))
    else:
        promote, reason = _still_promotable(model, version, promote, reason)
        if promote and not serving_bundle.bundle_exists(resources.models_bucket, model, version.version):
            _publish_from_run(resources, version)
        # The dead trainer's run is closed before the event, so whoever the event wakes sees it done.
        tracking.finish_run_if_running(version.run_id)
        promote = carry_out(
            resources,
            model,
            version.version,
            promote,
            reason,
            event_detail(model, version, reason),
            version.tags.get(APPROVAL_MODE_TAG, "auto"),
        )
    return TrainingOutcome(model, version.version, promote, reason, {}, version.run_id, trained=False)


def _still_promotable(
    model: str, version: tracking.ModelVersion, promote: bool, reason: str
) -> tuple[bool, str]:
    """A dead trainer's promotion no longer holds once a newer version took the champion's place,
    or (under manual approval) passed the gate and waits in its place."""
    if not promote:
        return promote, reason
    champion = tracking.champion(model)
    if champion is not None and int(champion.version) > int(version.version):
        return False, f"champion moved to version {champion.version} meanwhile"
    if version.tags.get(APPROVAL_MODE_TAG) == "manual":
        newer = [v.version for v in waiting_versions(model) if int(v.version) > int(version.version)]
        if newer:
            return False, f"version {newer[-1]} passed the gate meanwhile and awaits approval"
    return promote, reason
