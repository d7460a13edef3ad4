"""The champion's lifecycle (common/champion.py), one defect at a time: each test names a way the
champion could be wrong before the lifecycle had one owner (issue 19), and shows it no longer is.
The in-memory ports (tests/fake_lifecycle.py) stand in for MLflow, S3 and EventBridge;
tests/unit/test_champion_states.py runs the same lifecycle against the real registry and moto."""

from __future__ import annotations

import pytest

from common.bundles import ServingPointer
from common.champion import ROLLED_BACK, Champions, LifecycleError
from tests.fake_lifecycle import Registry

MODEL = "iris"


@pytest.fixture
def registry() -> Registry:
    return Registry()


def _promoted(registry: Registry, version: str) -> None:
    """A version the gate passed under automatic approval, promoted by its trainer."""
    registry.add(version, **{"gate.decision": "promote", "gate.reason": f"version {version} is better"})
    champions = registry.champions
    assert champions.decide(MODEL, version, True, f"version {version} is better", {"version": version})


def _pointer(registry: Registry) -> ServingPointer:
    assert registry.pointer_body is not None
    return ServingPointer.model_validate_json(registry.pointer_body[0])


def test_a_plain_rollback_never_serves_a_version_rolled_back_away_from(registry: Registry) -> None:
    # GIVEN v4 rolled back to v3, then v5 promoted
    for version in ("3", "4"):
        _promoted(registry, version)
    registry.champions.rollback(MODEL, None, "carol")
    _promoted(registry, "5")

    # WHEN the operator rolls back again without naming a version
    done = registry.champions.rollback(MODEL, None, "carol")

    # THEN v3 serves, not v4 (which keeps its mark)
    assert (done.from_version, done.to_version, registry.alias, registry.pointer) == ("5", "3", "3", "3")
    assert registry.tags("4")[ROLLED_BACK].startswith("rolled back to version 3")


def test_a_rollback_cut_short_after_its_commit_is_finished_by_running_it_again(registry: Registry) -> None:
    for version in ("1", "2", "3"):
        _promoted(registry, version)
    # WHEN the rollback dies between the pointer and the alias
    registry.failing.add("alias")
    with pytest.raises(ConnectionError):
        registry.champions.rollback(MODEL, None, "carol")
    assert (registry.pointer, registry.alias) == ("2", "3")

    # THEN running it again finishes it, and does not go one version further back
    again = registry.champions.rollback(MODEL, None, "carol")
    assert (registry.pointer, registry.alias) == ("2", "2")
    assert not again.done_now and "already serves" in again.message
    assert registry.sent_types().count("ModelRolledBack") == 1
    # AND once more changes nothing either
    assert not registry.champions.rollback(MODEL, None, "carol").done_now
    assert registry.pointer == "2"


def test_rollback_to_the_aliases_version_repairs_a_pointer_that_lags_it(registry: Registry) -> None:
    # GIVEN a pointer written before the lifecycle recorded its changes, left behind by its alias
    for version in ("1", "2"):
        registry.add(version, promotion="better")
    registry.pointer = "1"
    registry.alias = "2"

    # WHEN the operator runs the repair status suggests
    done = registry.champions.rollback(MODEL, "2", "carol")

    # THEN it is not refused as "already the champion": the pointer follows the alias
    assert done.done_now
    assert (registry.pointer, registry.alias) == ("2", "2")
    assert _pointer(registry).change is not None


def test_rollback_to_the_current_champion_changes_nothing_and_says_so(registry: Registry) -> None:
    _promoted(registry, "1")
    done = registry.champions.rollback(MODEL, "1", "carol")
    assert not done.done_now and "already the champion" in done.message
    assert registry.sent_types() == ["ModelPromoted"]


def test_a_redelivered_job_does_not_undo_a_rollback(registry: Registry) -> None:
    _promoted(registry, "3")
    # GIVEN v4's trainer committed its promotion, then died before tagging anything
    registry.add("4", **{"gate.decision": "promote", "gate.reason": "better"})
    registry.failing.add("alias")
    with pytest.raises(ConnectionError):
        registry.champions.decide(MODEL, "4", True, "better", {"version": "4"})
    # AND the operator rolled back from it
    registry.champions.rollback(MODEL, None, "carol")
    assert registry.pointer == "3"

    # WHEN its job comes back
    settled = registry.champions.settle_job(MODEL, "list-4", lambda version: None)

    # THEN v3 keeps serving
    assert settled is not None and settled.version == "4"
    assert (registry.pointer, registry.alias) == ("3", "3")
    assert ROLLED_BACK in registry.tags("4")


def test_a_stale_writer_loses_the_pointer_and_decides_again(registry: Registry) -> None:
    for version in ("1", "2"):
        _promoted(registry, version)
    registry.add("3", **{"gate.decision": "promote", "gate.reason": "better"})

    class PromotionSneaksIn:
        """The pointer store, with v3's promotion committed between a rollback's read and write."""

        def __init__(self) -> None:
            self.raced = False

        def read(self, model: str) -> tuple[bytes, str] | None:
            return registry.read(model)

        def bundle_exists(self, model: str, version: str) -> bool:
            return True

        def write(self, model: str, body: bytes, etag: str | None) -> str:
            if not self.raced:
                self.raced = True
                registry.champions.decide(MODEL, "3", True, "better", {"version": "3"})
            return registry.write(model, body, etag)

    racing = Champions(registry, PromotionSneaksIn(), registry.publish)

    # WHEN a rollback from v2 races v3's promotion
    done = racing.rollback(MODEL, None, "carol")

    # THEN the rollback lost the first write, saw v3, and rolled back from v3: alias and pointer agree
    assert (done.from_version, done.to_version) == ("3", "2")
    assert (registry.pointer, registry.alias) == ("2", "2")
    assert _pointer(registry).generation == 4  # v1, v2, v3, the rollback: nothing overwritten


def test_a_malformed_pointer_is_reported_and_rollback_to_rewrites_it(registry: Registry) -> None:
    _promoted(registry, "1")
    registry.pointer_body = (b"{not json", "broken")
    with pytest.raises(LifecycleError, match=r"is not a pointer .*arrival rollback --model iris --to"):
        registry.champions.rollback(MODEL, None, "carol")

    done = registry.champions.rollback(MODEL, "1", "carol")

    assert done.done_now and registry.pointer == "1"


def test_rollback_refuses_a_version_waiting_for_approval_or_rejected(registry: Registry) -> None:
    _promoted(registry, "1")
    registry.add("2", awaiting_approval="better")
    registry.add("3", rejected="worse")
    with pytest.raises(LifecycleError, match="awaits approval: `arrival approve --model iris --version 2`"):
        registry.champions.rollback(MODEL, "2", "carol")
    with pytest.raises(LifecycleError, match=r"was rejected \(worse\)"):
        registry.champions.rollback(MODEL, "3", "carol")
    assert registry.pointer == "1"


def test_a_version_named_with_to_serves_again_and_loses_its_mark(registry: Registry) -> None:
    for version in ("1", "2"):
        _promoted(registry, version)
    registry.champions.rollback(MODEL, None, "carol")
    assert ROLLED_BACK in registry.tags("2")

    registry.champions.rollback(MODEL, "2", "carol")

    assert (registry.pointer, registry.alias) == ("2", "2")
    assert ROLLED_BACK not in registry.tags("2") and ROLLED_BACK in registry.tags("1")
