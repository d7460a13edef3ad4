"""The champion's lifecycle. Every change of the version a model serves, and every decision on a
version, goes through this module: the gate's promotion or rejection, a request for a person's
approval, that person's approval or rejection, a rollback, and finishing whichever of them a crash
cut short. The trainer (worker/) and the `arrival` commands (cli/) call it; nothing else writes the
registry's `champion` alias or a serving pointer.

**The serving pointer is the commit point.** A change of champion is one conditional write of
`pointers/<model>.json` (S3 `If-Match` on the ETag read before deciding): of two racing writers the
stale one loses, re-reads, and decides again instead of overwriting (the registry's alias has no
compare-and-set; S3 has). The pointer records the change it made (kind, the version it replaced,
reason, generation), so the rest of the change is carried out from the pointer alone, each step
idempotent, in this order:
1. the registry's `champion` alias moves to the pointer's version;
2. the versions are tagged: `promotion` for a promotion or an approval (whose `awaiting_approval`
   goes); `rolled_back` on the version rolled back away from, `rollback` on the one rolled back to;
3. the event goes out (`ModelPromoted`, `ModelRolledBack`), then the tag saying it did.

Every command first finishes the change the pointer records (`finish`), so a command cut short is
finished by running it again, by any other command on the model, or by the trainer's next job; and
at any moment at most one change (the pointer's) is unfinished. Before a pointer names a version,
its bundle exists: the trainer publishes it first.

Decisions that move no champion (the gate's rejection, a request for approval and the older request
it supersedes, a person's rejection) are tags on the version, in an order a redelivered job
recognises (`settle_job`): a version's first decision tag in DECISIONS settles it, and the event
goes out before `event.published` says so. Events are sent at least once: a crash between sending
one and tagging it sends it again.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from common.adapters import events, s3
from common.adapters.stack import StackResources
from common.bundles import ChampionChange, ChangeKind, ServingPointer, bundle_manifest_key, pointer_key
from common.contracts import BUILT_IN_RECIPE

if TYPE_CHECKING:
    from common.adapters.tracking import ModelVersion

# A version's decision tags, each valued with its reason.
PROMOTION = "promotion"
REJECTED = "rejected"
# A version the gate passed under manual approval waits with this tag until a person decides, or a
# newer passing version supersedes it.
AWAITING = "awaiting_approval"
SUPERSEDED = "superseded"
# On a version rolled back away from (valued with where to, and the pointer's generation): neither a
# plain rollback nor a redelivered job ever serves it again; only `rollback --to` it does.
ROLLED_BACK = "rolled_back"
# On the version rolled back to: the rollback's reason; and the generation whose event went out.
ROLLBACK = "rollback"
ROLLBACK_PUBLISHED = "rollback.published"
# The event a version's decision published: set only once it is out, so a crash (or EventBridge
# down) before then leaves it for the next command to send.
PUBLISHED = "event.published"
# The contract's `training.approval` when the gate judged the version: a dead trainer's successor
# finishes the decision under the mode it was made in, whatever the contract says by then.
APPROVAL_MODE = "gate.approval"
# A version's recipe (worker/recipes.py): its content hash, or BUILT_IN_RECIPE for the built-in one.
RECIPE_HASH = "recipe_hash"
APPROVED_BY = "approved by "
# The tag that marks each decision done, and the event that announces it. The first one a version
# carries settles its state: a crash between tagging a person's decision and removing
# `awaiting_approval` leaves both.
DECISIONS = (
    (PROMOTION, "ModelPromoted"),
    (REJECTED, "ModelRejected"),
    (AWAITING, "ApprovalRequested"),
)
# What ApprovalRequested carries (the fields agreed for it; no lineage).
APPROVAL_REQUEST_KEYS = ("name", "version", "metrics", "champion_version", "reason", "run_id")
# Concurrent changes a command re-reads and decides again after, before it gives up.
COMMIT_ATTEMPTS = 5


class LifecycleError(RuntimeError):
    """A command refused, with the reason and what to do instead."""


class PointerMovedError(RuntimeError):
    """The pointer changed since it was read: another change won."""


class Registry(Protocol):
    """What the lifecycle needs of the model registry (common/adapters/tracking.py is one)."""

    def champion(self, name: str) -> ModelVersion | None: ...
    def model_version(self, name: str, version_or_alias: str) -> ModelVersion: ...
    def versions_of(self, name: str) -> list[ModelVersion]: ...
    def versions_with_tag(self, name: str, key: str, value: str) -> list[ModelVersion]: ...
    def move_champion(self, name: str, model_version: str) -> None: ...
    def tag_version(self, name: str, model_version: str, key: str, value: str) -> None: ...
    def untag_version(self, name: str, model_version: str, key: str) -> None: ...
    def run_metrics(self, run_id: str) -> dict[str, float]: ...
    def run_tags(self, run_id: str) -> dict[str, str]: ...
    def finish_run_if_running(self, run_id: str) -> None: ...


class Pointers(Protocol):
    """The serving pointers and the bundles they name."""

    def read(self, model: str) -> tuple[bytes, str] | None: ...
    def write(self, model: str, body: bytes, etag: str | None) -> str: ...
    def bundle_exists(self, model: str, version: str) -> bool: ...


Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class S3Pointers:
    bucket: str

    def read(self, model: str) -> tuple[bytes, str] | None:
        return s3.get_bytes(self.bucket, pointer_key(model))

    def write(self, model: str, body: bytes, etag: str | None) -> str:
        try:
            return s3.put_bytes_if(self.bucket, pointer_key(model), body, etag=etag)
        except s3.PreconditionFailedError as error:
            raise PointerMovedError(str(error)) from error

    def bundle_exists(self, model: str, version: str) -> bool:
        return s3.get_bytes(self.bucket, bundle_manifest_key(model, version)) is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Current:
    """A model's pointer as read (None when nothing was ever promoted), with its ETag."""

    pointer: ServingPointer | None
    etag: str | None
    # Whether finishing had to bring a pointer written before changes were recorded to the alias.
    repaired: bool = False

    @property
    def version(self) -> str | None:
        return self.pointer.version if self.pointer else None

    @property
    def generation(self) -> int:
        return self.pointer.generation if self.pointer else 0


@dataclass(frozen=True)
class Decided:
    """A person's approval or rejection, as carried out."""

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


@dataclass(frozen=True)
class RolledBack:
    model: str
    # The version served before (None when there was none, or the pointer was unreadable).
    from_version: str | None
    to_version: str
    # False when this was already in effect (the command was run again).
    done_now: bool

    @property
    def message(self) -> str:
        model, to = self.model, self.to_version
        if self.done_now and self.from_version is None:
            return f"{model}: champion and serving set to version {to}"
        if self.done_now:
            return f"{model}: champion and serving rolled back from version {self.from_version} to {to}"
        if self.from_version is None:
            return f"{model}: version {to} is already the champion and serves; nothing to do"
        return (
            f"{model}: version {to} already serves, rolled back from version {self.from_version}; "
            "nothing to do (to go further back, name a version with --to)"
        )


@dataclass(frozen=True)
class Promotion:
    in_effect: bool  # the version is the champion
    done_now: bool  # by this call
    reason: str  # the promotion's, or why it was refused
    replaced: str | None = None


@dataclass(frozen=True)
class Settled:
    """A job's version whose decision a redelivered job found made, or finished."""

    version: str
    promoted: bool
    reason: str
    run_id: str


def decided_event(version: ModelVersion) -> tuple[str, str] | None:
    """The decision tag a version carries and its event's detail-type, or None while undecided."""
    return next(((tag, kind) for tag, kind in DECISIONS if tag in version.tags), None)


def rolled_back_mark(to_version: str, generation: int) -> str:
    return f"rolled back to version {to_version} (pointer generation {generation})"


@dataclass(frozen=True)
class Champions:
    """The lifecycle of every model of one stack: its registry, serving pointers and event bus."""

    registry: Registry
    pointers: Pointers
    publish: Publish

    @classmethod
    def of_stack(cls, resources: StackResources) -> Champions:
        # MLflow takes a second or two to import: only commands that change a champion pay for it.
        from common.adapters import tracking

        return cls(
            tracking,
            S3Pointers(resources.models_bucket),
            functools.partial(events.publish, resources.event_bus_name),
        )

    # -- reading -----------------------------------------------------------------------------

    def current(self, model: str) -> Current:
        found = self.pointers.read(model)
        if found is None:
            return Current(None, None)
        try:
            return Current(ServingPointer.model_validate_json(found[0]), found[1])
        except ValidationError as error:
            raise LifecycleError(
                f"the serving pointer of {model!r} ({pointer_key(model)}) is not a pointer "
                f"({str(error).splitlines()[0]}); `arrival rollback --model {model} --to <version>` "
                "writes a good one"
            ) from error

    def waiting_versions(self, model: str) -> list[ModelVersion]:
        """The versions awaiting approval, oldest first: not one a crash left tagged after it was
        superseded or decided."""
        settled = (SUPERSEDED, PROMOTION, REJECTED)
        return [
            version
            for version in self.registry.versions_of(model)
            if AWAITING in version.tags and not any(tag in version.tags for tag in settled)
        ]

    def event_detail(
        self, model: str, version: ModelVersion, reason: str, champion_version: str | None = None
    ) -> dict[str, Any]:
        """A decision's event detail, from what the version's run logged. The champion it is
        compared with is the gate's unless named (a person's approval replaces the champion of that
        moment)."""
        run_tags = self.registry.run_tags(version.run_id)
        return {
            "name": model,
            "version": version.version,
            "metrics": self.registry.run_metrics(version.run_id),
            "champion_version": champion_version or version.tags.get("gate.champion_version") or None,
            "reason": reason,
            "run_id": version.run_id,
            "lineage": _json_list(run_tags.get("lineage.sources", "[]")),
            "lineage_files": int(run_tags.get("lineage.files", "0")),
        }

    # -- the commit point and finishing ------------------------------------------------------

    def finish(self, model: str) -> Current:
        """Carries out whatever the pointer's change left undone (nothing, most of the time), and
        returns the pointer. A pointer written before pointers recorded their change followed the
        alias, which moved first: it is brought to the alias's version."""
        current = self.current(model)
        if current.pointer is None:
            return current
        champion = self.registry.champion(model)
        if current.pointer.change is None:
            if champion is None or champion.version == current.pointer.version:
                return current
            repair = ChampionChange(
                kind="repair",
                from_version=current.pointer.version,
                reason=f"the pointer follows the champion alias (version {champion.version})",
            )
            committed = self._commit(model, current, champion.version, repair, champion)
            return Current(committed.pointer, committed.etag, repaired=True)
        self._carry_out(current.pointer, champion)
        return current

    def _commit(
        self,
        model: str,
        current: Current,
        version: str,
        change: ChampionChange,
        champion: ModelVersion | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Current:
        """The conditional write that makes `version` the champion, then the rest of the change.
        Raises PointerMovedError if another change wrote the pointer since `current` was read."""
        pointer = ServingPointer(
            model=model,
            version=version,
            manifest_key=bundle_manifest_key(model, version),
            promoted_at=_now(),
            reason=change.reason,
            generation=current.generation + 1,
            change=change,
        )
        etag = self.pointers.write(model, pointer.model_dump_json().encode(), current.etag)
        self._carry_out(pointer, champion, detail)
        return Current(pointer, etag)

    def _carry_out(
        self, pointer: ServingPointer, champion: ModelVersion | None, detail: dict[str, Any] | None = None
    ) -> None:
        model, version, change = pointer.model, pointer.version, pointer.change
        if champion is None or champion.version != version:
            self.registry.move_champion(model, version)
        if change is None or change.kind == "repair":
            return
        target = self.registry.model_version(model, version)
        if change.kind == "rollback":
            self._carry_out_rollback(pointer, change, target)
            return
        if target.tags.get(PROMOTION) != change.reason:
            self.registry.tag_version(model, version, PROMOTION, change.reason)
        if AWAITING in target.tags:
            self.registry.untag_version(model, version, AWAITING)
        if target.tags.get(PUBLISHED) != "ModelPromoted":
            sent = detail or self.event_detail(model, target, change.reason, change.from_version)
            self.publish("ModelPromoted", sent)
            self.registry.tag_version(model, version, PUBLISHED, "ModelPromoted")

    def _carry_out_rollback(
        self, pointer: ServingPointer, change: ChampionChange, target: ModelVersion
    ) -> None:
        model, version = pointer.model, pointer.version
        if change.from_version is not None:
            mark = rolled_back_mark(version, pointer.generation)
            away = self.registry.model_version(model, change.from_version)
            if away.tags.get(ROLLED_BACK) != mark:
                self.registry.tag_version(model, change.from_version, ROLLED_BACK, mark)
        if ROLLED_BACK in target.tags:  # named with --to: served again on purpose
            self.registry.untag_version(model, version, ROLLED_BACK)
        if target.tags.get(ROLLBACK) != change.reason:
            self.registry.tag_version(model, version, ROLLBACK, change.reason)
        if target.tags.get(ROLLBACK_PUBLISHED) != str(pointer.generation):
            detail = {
                "name": model,
                "version": version,
                "from_version": change.from_version,
                "reason": change.reason,
            }
            self.publish("ModelRolledBack", detail)
            self.registry.tag_version(model, version, ROLLBACK_PUBLISHED, str(pointer.generation))

    def _promote(
        self,
        model: str,
        version: str,
        kind: ChangeKind,
        reason: str,
        refusal: Callable[[Current], str | None],
        detail: dict[str, Any] | None = None,
    ) -> Promotion:
        """Makes `version` the champion unless `refusal` (asked of the pointer as it stands, once
        finished) gives a reason not to."""
        for _ in range(COMMIT_ATTEMPTS):
            current = self.finish(model)
            if current.version == version:  # committed by an earlier try, and finished just now
                return Promotion(in_effect=True, done_now=False, reason=reason)
            if why_not := refusal(current):
                return Promotion(in_effect=False, done_now=False, reason=why_not)
            change = ChampionChange(kind=kind, from_version=current.version, reason=reason)
            try:
                self._commit(model, current, version, change, detail=detail)
            except PointerMovedError:
                continue
            return Promotion(in_effect=True, done_now=True, reason=reason, replaced=current.version)
        raise _kept_changing(model)

    # -- the gate ----------------------------------------------------------------------------

    def decide(
        self,
        model: str,
        version: str,
        promote: bool,
        reason: str,
        detail: dict[str, Any],
        approval: str = "auto",
    ) -> bool:
        """The gate's decision on a version it just registered (whose bundle it published if it
        passed). Returns whether the version is now the champion: not when it waits for a person,
        nor when the champion moved meanwhile (the version is then rejected with that reason)."""
        if promote and approval == "manual":
            self._request_approval(model, version, reason, detail)
            return False
        if promote:
            refusal = functools.partial(self._no_longer_promotable, model, version)
            promotion = self._promote(model, version, "promotion", reason, refusal, detail)
            if promotion.in_effect:
                return True
            reason, detail = promotion.reason, {**detail, "reason": promotion.reason}
        self.registry.tag_version(model, version, REJECTED, reason)
        self._announce_decision(model, version, "ModelRejected", detail)
        return False

    def _no_longer_promotable(self, model: str, version: str, current: Current) -> str | None:
        """Why the gate's promotion of a version no longer holds: it was rolled back away from, or a
        newer version took the champion's place, or (under manual approval) passed the gate and
        waits in its place."""
        found = self.registry.model_version(model, version)
        if ROLLED_BACK in found.tags:
            return f"it was {found.tags[ROLLED_BACK]}"
        if current.version is not None and int(current.version) > int(version):
            return f"champion moved to version {current.version} meanwhile"
        if found.tags.get(APPROVAL_MODE) == "manual":
            newer = [v.version for v in self.waiting_versions(model) if int(v.version) > int(version)]
            if newer:
                return f"version {newer[-1]} passed the gate meanwhile and awaits approval"
        return None

    def _announce_decision(self, model: str, version: str, detail_type: str, detail: dict[str, Any]) -> None:
        self.publish(detail_type, detail)
        self.registry.tag_version(model, version, PUBLISHED, detail_type)

    def _request_approval(self, model: str, version: str, reason: str, detail: dict[str, Any]) -> None:
        """Older waiting versions are superseded before this one is tagged waiting: a crash in
        between leaves this one undecided, and whoever finishes it supersedes again (a no-op by
        then)."""
        for older in self.waiting_versions(model):
            if int(older.version) < int(version):
                superseded = f"superseded by version {version}, which passed the gate after it"
                self.registry.tag_version(model, older.version, SUPERSEDED, superseded)
                self.registry.untag_version(model, older.version, AWAITING)
        self.registry.tag_version(model, version, AWAITING, reason)
        request = {key: detail.get(key) for key in APPROVAL_REQUEST_KEYS}
        self._announce_decision(model, version, "ApprovalRequested", request)

    def _announce(self, version: ModelVersion, tag: str) -> None:
        """Sends the event of a decision (its tag in DECISIONS) whose event never went out."""
        detail_type = dict(DECISIONS)[tag]
        if version.tags.get(PUBLISHED) == detail_type:
            return
        detail = self.event_detail(version.name, version, version.tags[tag])
        if tag == AWAITING:
            detail = {key: detail.get(key) for key in APPROVAL_REQUEST_KEYS}
        self._announce_decision(version.name, version.version, detail_type, detail)

    def settle_job(
        self,
        model: str,
        list_hash: str,
        publish_bundle: Callable[[ModelVersion], None],
        recipe: str = BUILT_IN_RECIPE,
    ) -> Settled | None:
        """The version a run already made from this data list with this recipe, if any (a repeated
        or redelivered job; a new recipe on the same data is a new training). If its trainer died
        after registering it but before the decision was carried out (the version carries the gate's
        decision in its tags), it is carried out now, publishing its bundle first (`publish_bundle`)
        if a promotion needs one; if the decision was made but its event never went out, the event
        is sent now."""
        existing = [
            version
            for version in self.registry.versions_with_tag(model, "accepted_list_hash", list_hash)
            # A version from before recipes has no such tag: the built-in pipeline made it.
            if version.tags.get(RECIPE_HASH, BUILT_IN_RECIPE) == recipe
        ]
        if not existing:
            return None
        self.finish(model)  # a promotion committed before the crash is finished first
        version = self.registry.model_version(model, existing[0].version)
        decided = decided_event(version)
        if SUPERSEDED in version.tags and (decided is None or decided[0] == AWAITING):
            # Nothing to announce: the newer version's request is the news. A crash may have left
            # the waiting tag behind.
            self.registry.untag_version(model, version.version, AWAITING)
            return Settled(version.version, False, version.tags[SUPERSEDED], version.run_id)
        if decided is not None:
            tag = decided[0]
            self._announce(version, tag)
            return Settled(version.version, tag == PROMOTION, version.tags[tag], version.run_id)
        promote = version.tags.get("gate.decision") == "promote"
        reason = version.tags.get("gate.reason", "")
        if promote and (why_not := self._no_longer_promotable(model, version.version, self.current(model))):
            promote, reason = False, why_not
        if promote and not self.pointers.bundle_exists(model, version.version):
            publish_bundle(version)
        # The dead trainer's run is closed before the event, so whoever the event wakes sees it done.
        self.registry.finish_run_if_running(version.run_id)
        promoted = self.decide(
            model,
            version.version,
            promote,
            reason,
            self.event_detail(model, version, reason),
            version.tags.get(APPROVAL_MODE, "auto"),
        )
        settled = self.registry.model_version(model, version.version)
        return Settled(version.version, promoted, _reason_of(settled, reason), version.run_id)

    # -- a person's decisions ----------------------------------------------------------------

    def _version_of(self, model: str, version: str) -> ModelVersion:
        if not version.isdigit():
            raise LifecycleError(f"version {version!r} is not a version number (e.g. --version 3)")
        versions = self.registry.versions_of(model)
        if not versions:
            raise LifecycleError(
                f"model {model!r} has no registered version; `arrival status` lists the models"
            )
        found = next((v for v in versions if v.version == str(int(version))), None)
        if found is None:
            numbers = ", ".join(v.version for v in versions)
            raise LifecycleError(f"model {model!r} has no version {version} (its versions: {numbers})")
        return found

    def _awaits(self, found: ModelVersion) -> bool:
        """Waiting, and not decided or superseded since (a crash may leave the waiting tag behind)."""
        decided = decided_event(found)
        return decided is not None and decided[0] == AWAITING and SUPERSEDED not in found.tags

    def _why_not_waiting(self, found: ModelVersion, action: str) -> str:
        """The one-line reason a version that does not await approval cannot be approved or rejected."""
        tags, which = found.tags, f"version {found.version} of {found.name!r}"
        if SUPERSEDED in tags:
            waiting = self.waiting_versions(found.name)
            instead = f"; version {waiting[-1].version} awaits approval" if waiting else ""
            return f"{which} no longer awaits approval: it was {tags[SUPERSEDED]}{instead}"
        if PROMOTION in tags:
            if action == "reject":
                return f"{which} was promoted ({tags[PROMOTION]}); to stop serving it, `arrival rollback`"
            return f"{which} never waited for approval: the gate promoted it ({tags[PROMOTION]})"
        if REJECTED in tags:
            return f"{which} was rejected ({tags[REJECTED]}); it cannot be approved"
        # Registered, and its trainer still carrying out the gate's decision (or dead: the next finishes it).
        if "gate.decision" in tags:
            return f"{which} is being decided (the gate: {tags['gate.decision']}); ask again in a moment"
        return f"{which} has not been judged by the gate; it never waited for approval"

    def approve(self, model: str, version: str, by: str) -> Decided:
        """Promote a version awaiting approval ("approved by <by>"). Only the newest waiting version
        can be, and only while no newer version is the champion: the gate judged it against the
        champion of its time. Approving again says so; an approval cut short is finished."""
        found = self._version_of(model, version)
        self.finish(model)
        found = self.registry.model_version(model, found.version)
        promotion = found.tags.get(PROMOTION, "")
        if promotion.startswith(APPROVED_BY):
            return Decided(model, found.version, True, promotion, done_now=False)
        if not self._awaits(found):
            raise LifecycleError(self._why_not_waiting(found, "approve"))
        newest = self.waiting_versions(model)[-1]
        if newest.version != found.version:
            raise LifecycleError(
                f"version {found.version} of {model!r} is no longer the best waiting version: version "
                f"{newest.version} passed the gate after it and awaits approval; approve that one"
            )
        if not self.pointers.bundle_exists(model, found.version):
            raise LifecycleError(
                f"version {found.version} of {model!r} has no serving bundle; re-queue its training "
                "(`arrival redrive training`) so a trainer publishes it"
            )

        def champion_moved_on(current: Current) -> str | None:
            if current.version is not None and int(current.version) > int(found.version):
                return (
                    f"the champion of {model!r} moved to version {current.version} after version "
                    f"{found.version} was judged, so the gate's verdict no longer holds; reject it"
                )
            return None

        reason = f"{APPROVED_BY}{by}"
        approval = self._promote(model, found.version, "approval", reason, champion_moved_on)
        if not approval.in_effect:
            raise LifecycleError(approval.reason)
        return Decided(model, found.version, True, reason, approval.done_now, approval.replaced)

    def reject(self, model: str, version: str, reason: str, by: str) -> Decided:
        """Reject a version awaiting approval (any of them, not only the newest): the `rejected` tag
        ("rejected by <by>: <reason>"), then `ModelRejected`. The champion stays."""
        if not reason.strip():
            raise LifecycleError("--reason is empty: say why the version is rejected (it is recorded)")
        self._version_of(model, version)
        self.finish(model)  # first: an approval cut short before its tags is finished, and then seen
        found = self._version_of(model, version)
        decided = decided_event(found)
        if decided is not None and decided[0] == REJECTED:
            self._settle_person_decision(found, REJECTED)
            return Decided(model, found.version, False, found.tags[REJECTED], done_now=False)
        if not self._awaits(found):
            raise LifecycleError(self._why_not_waiting(found, "reject"))
        recorded = f"rejected by {by}: {reason.strip()}"
        self.registry.tag_version(model, found.version, REJECTED, recorded)
        self.registry.untag_version(model, found.version, AWAITING)
        self._announce_decision(
            model, found.version, "ModelRejected", self.event_detail(model, found, recorded)
        )
        return Decided(model, found.version, False, recorded, done_now=True)

    def _settle_person_decision(self, found: ModelVersion, tag: str) -> None:
        """A repeated rejection: whatever a crash left undone of it (the waiting tag's removal, the
        event) is done now."""
        if AWAITING in found.tags:
            self.registry.untag_version(found.name, found.version, AWAITING)
        self._announce(found, tag)

    def waiting(self, model: str) -> list[dict[str, Any]]:
        """The model's versions awaiting approval, newest (the one that can be approved) first: the
        gate's reason, the champion it was judged against, its run and metrics."""
        return [
            {
                "version": found.version,
                "reason": found.tags[AWAITING],
                "champion_version": found.tags.get("gate.champion_version") or None,
                "run_id": found.run_id,
                "metrics": self.registry.run_metrics(found.run_id),
            }
            for found in reversed(self.waiting_versions(model))
        ]

    # -- rollback ----------------------------------------------------------------------------

    def rollback(self, model: str, to_version: str | None, by: str) -> RolledBack:
        """Serve an earlier version: by default the newest version before the champion that was
        promoted and never rolled back away from. A champion that is itself a rollback's is left
        as it is (running the command again changes nothing); going further back takes --to.
        `--to` the champion's own version rewrites a pointer that lags or is broken."""
        if to_version is not None and not to_version.isdigit():
            raise LifecycleError(f"version {to_version!r} is not a version number (e.g. --to 3)")
        for _ in range(COMMIT_ATTEMPTS):
            try:
                current = self.finish(model)
            except LifecycleError:
                if to_version is None:
                    raise
                current = self._overwritable(model)
            target = self._rollback_target(model, current, to_version)
            if current.version == target and current.pointer is not None:
                change = current.pointer.change
                if current.repaired:  # a pointer that lagged its alias now follows it
                    return RolledBack(model, change.from_version if change else None, target, done_now=True)
                rolled = change is not None and change.kind == "rollback"
                return RolledBack(model, change.from_version if rolled and change else None, target, False)
            if not self.pointers.bundle_exists(model, target):
                raise LifecycleError(
                    f"version {target} of {model!r} has no serving bundle (it was never promoted, or "
                    "predates serving bundles); pick a version that served before"
                )
            away = current.version
            reason = (
                f"rolled back from version {away} by {by}" if away else f"set to version {target} by {by}"
            )
            change = ChampionChange(kind="rollback", from_version=away, reason=reason)
            try:
                self._commit(model, current, target, change)
            except PointerMovedError:
                continue
            return RolledBack(model, away, target, done_now=True)
        raise _kept_changing(model)

    def _overwritable(self, model: str) -> Current:
        """A broken pointer, to be replaced by `--to` (conditionally on its ETag)."""
        found = self.pointers.read(model)
        return Current(None, found[1] if found else None)

    def _rollback_target(self, model: str, current: Current, to_version: str | None) -> str:
        if to_version is not None:
            found = self._version_of(model, to_version)
            if self._awaits(found):
                raise LifecycleError(
                    f"version {found.version} of {model!r} awaits approval: "
                    f"`arrival approve --model {model} --version {found.version}` serves it"
                )
            if REJECTED in found.tags:
                raise LifecycleError(
                    f"version {found.version} of {model!r} was rejected ({found.tags[REJECTED]}); "
                    "it cannot serve"
                )
            return found.version
        if current.pointer is None:
            raise LifecycleError(f"model {model!r} has no champion to roll back from")
        change = current.pointer.change
        if change is not None and change.kind == "rollback":
            return current.pointer.version  # already a rollback's champion: nothing to do
        earlier = [
            version.version
            for version in self.registry.versions_of(model)
            if PROMOTION in version.tags
            and ROLLED_BACK not in version.tags
            and int(version.version) < int(current.pointer.version)
        ]
        if not earlier:
            raise LifecycleError(
                f"model {model!r} has no champion before version {current.pointer.version} that was "
                "not rolled back; name one with --to"
            )
        return earlier[-1]


def _kept_changing(model: str) -> LifecycleError:
    return LifecycleError(
        f"the serving pointer of {model!r} kept changing under {COMMIT_ATTEMPTS} tries; run the command again"
    )


def _reason_of(version: ModelVersion, fallback: str) -> str:
    decided = decided_event(version)
    return version.tags[decided[0]] if decided else fallback


def _json_list(text: str) -> list[Any]:
    """A tag holding a JSON list (cut to fit by the trainer, in which case it may not parse)."""
    try:
        found = json.loads(text)
    except ValueError:
        return [text]
    return found if isinstance(found, list) else [text]
