"""`arrival approve` and `arrival reject`: a person's decision on a version that the gate passed
under manual approval (`training.approval: manual` in the model's contract), carried out in the
gate's own crash-safe order (worker/decision.py); and what waits for one.

Each command is safe to run twice: repeating a decision already carried out says so and succeeds
(finishing it first if a crash cut it short, e.g. sending an event that never went out); asking for
the other decision, or deciding on a version that does not wait, is refused with the reason."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cli.operations import OperationError, outputs_of
from common.adapters.stack import StackResources

if TYPE_CHECKING:
    from common.adapters.tracking import ModelVersion


@dataclass(frozen=True)
class Decided:
    model: str
    version: str
    approved: bool
    reason: str
    # False when the same decision had already been made (the command was run again).
    done_now: bool
    # The champion this approval replaced (None if the model had none, or nothing moved now).
    from_version: str | None = None

    @property
    def message(self) -> str:
        what = "approved" if self.approved else "rejected"
        if not self.done_now:
            return f"{self.model}: version {self.version} was already {what} ({self.reason}); nothing to do"
        if self.approved:
            moved = f"from version {self.from_version} " if self.from_version else ""
            return (
                f"{self.model}: version {self.version} {self.reason}; champion and serving moved "
                f"{moved}to version {self.version}"
            )
        return f"{self.model}: version {self.version} rejected ({self.reason}); the champion stays"


def current_user() -> str:
    """Who runs the command ($USER, else the login name), recorded in the version's tags."""
    try:
        return getpass.getuser()
    except OSError:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def _resources(stack_name: str) -> StackResources:
    return StackResources.from_outputs(outputs_of(stack_name))


def _version_of(model: str, version: str) -> ModelVersion:
    from common.adapters import tracking

    if not version.isdigit():
        raise OperationError(f"version {version!r} is not a version number (e.g. --version 3)")
    versions = tracking.versions_of(model)
    if not versions:
        raise OperationError(f"model {model!r} has no registered version; `arrival status` lists the models")
    found = next((v for v in versions if v.version == str(int(version))), None)
    if found is None:
        numbers = ", ".join(v.version for v in versions)
        raise OperationError(f"model {model!r} has no version {version} (its versions: {numbers})")
    return found


def _settle_repeat(resources: StackResources, found: ModelVersion, tag: str) -> None:
    """A repeated decision: whatever a crash left undone of it (the waiting tag's removal, the
    event) is done now."""
    from common.adapters import tracking
    from worker import decision

    if decision.AWAITING_TAG in found.tags:
        tracking.untag_version(found.name, found.version, decision.AWAITING_TAG)
    expected = dict(decision.DECISIONS)[tag]
    if found.tags.get(decision.PUBLISHED_TAG) != expected:
        detail = decision.event_detail(found.name, found, found.tags[tag])
        decision.announce(resources, found, tag, detail)


def _awaits(found: ModelVersion) -> bool:
    """Waiting, and not decided or superseded since (a crash may leave the waiting tag behind)."""
    from worker import decision

    decided = decision.decided_event(found)
    return (
        decided is not None
        and decided[0] == decision.AWAITING_TAG
        and decision.SUPERSEDED_TAG not in found.tags
    )


def _why_not_waiting(found: ModelVersion, action: str) -> str:
    """The one-line reason a version that does not await approval cannot be approved or rejected."""
    from worker import decision

    tags, which = found.tags, f"version {found.version} of {found.name!r}"
    if decision.SUPERSEDED_TAG in tags:
        waiting = decision.waiting_versions(found.name)
        instead = f"; version {waiting[-1].version} awaits approval" if waiting else ""
        return f"{which} no longer awaits approval: it was {tags[decision.SUPERSEDED_TAG]}{instead}"
    if "promotion" in tags:
        if action == "reject":
            return f"{which} was promoted ({tags['promotion']}); to stop serving it, `arrival rollback`"
        return f"{which} never waited for approval: the gate promoted it ({tags['promotion']})"
    if "rejected" in tags:
        return f"{which} was rejected ({tags['rejected']}); it cannot be approved"
    # Registered, and its trainer still carrying out the gate's decision (or dead: the next finishes it).
    if "gate.decision" in tags:
        return f"{which} is being decided (the gate: {tags['gate.decision']}); ask again in a moment"
    return f"{which} has not been judged by the gate; it never waited for approval"


def approve(model: str, version: str, by: str, stack_name: str) -> Decided:
    """Promote a version awaiting approval: the champion alias, the serving pointer, the
    `promotion` tag ("approved by <by>"), then `ModelPromoted`. Only the newest waiting version can
    be, and only while no newer version is the champion: the gate judged it against the champion of
    its time."""
    from common.adapters import tracking
    from worker import decision, serving_bundle

    found = _version_of(model, version)
    resources = _resources(stack_name)
    promotion = found.tags.get("promotion", "")
    if promotion.startswith(decision.APPROVED_BY):
        _settle_repeat(resources, found, "promotion")
        return Decided(model, found.version, True, promotion, done_now=False)
    if not _awaits(found):
        raise OperationError(_why_not_waiting(found, "approve"))
    newest = decision.waiting_versions(model)[-1]
    if newest.version != found.version:
        raise OperationError(
            f"version {found.version} of {model!r} is no longer the best waiting version: version "
            f"{newest.version} passed the gate after it and awaits approval; approve that one"
        )
    champion = tracking.champion(model)
    if champion is not None and int(champion.version) > int(found.version):
        raise OperationError(
            f"the champion of {model!r} moved to version {champion.version} after version "
            f"{found.version} was judged, so the gate's verdict no longer holds; reject it"
        )
    if not serving_bundle.bundle_exists(resources.models_bucket, model, found.version):
        raise OperationError(
            f"version {found.version} of {model!r} has no serving bundle in {resources.models_bucket}; "
            "re-queue its training (`arrival redrive training`) so a trainer publishes it"
        )
    previous = champion.version if champion is not None and champion.version != found.version else None
    reason = f"{decision.APPROVED_BY}{by}"
    detail = decision.event_detail(model, found, reason, champion_version=previous)
    decision.carry_out_approval(resources, model, found.version, True, reason, detail)
    return Decided(model, found.version, True, reason, done_now=True, from_version=previous)


def reject(model: str, version: str, reason: str, by: str, stack_name: str) -> Decided:
    """Reject a version awaiting approval (any of them, not only the newest): the `rejected` tag
    ("rejected by <by>: <reason>"), then `ModelRejected`. The champion stays."""
    from worker import decision

    if not reason.strip():
        raise OperationError("--reason is empty: say why the version is rejected (it is recorded)")
    found = _version_of(model, version)
    resources = _resources(stack_name)
    decided = decision.decided_event(found)
    if decided is not None and decided[0] == "rejected":
        _settle_repeat(resources, found, "rejected")
        return Decided(model, found.version, False, found.tags["rejected"], done_now=False)
    if not _awaits(found):
        raise OperationError(_why_not_waiting(found, "reject"))
    recorded = f"rejected by {by}: {reason.strip()}"
    detail = decision.event_detail(model, found, recorded)
    decision.carry_out_approval(resources, model, found.version, False, recorded, detail)
    return Decided(model, found.version, False, recorded, done_now=True)


def waiting(model: str) -> list[dict[str, Any]]:
    """The model's versions awaiting approval, newest (the one that can be approved) first: the
    gate's reason, the champion it was judged against, its run and metrics."""
    from common.adapters import tracking
    from worker import decision

    return [
        {
            "version": found.version,
            "reason": found.tags[decision.AWAITING_TAG],
            "champion_version": found.tags.get("gate.champion_version") or None,
            "run_id": found.run_id,
            "metrics": tracking.run_metrics(found.run_id),
        }
        for found in reversed(decision.waiting_versions(model))
    ]
