"""Manual approval: a version the gate passes waits, a newer one supersedes it, a person approves
or rejects it, and a crash at any step is finished by the next try (worker/decision.py's order)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cli import approval
from cli.main import app
from cli.operations import OperationError
from common import champion
from common.adapters import tracking
from common.adapters.stack import StackResources
from common.contracts import parse_contract
from tests import datasets
from tests.fake_lifecycle import Registry
from worker import decision

OUTPUTS = {
    "ProcessedBucketName": "unit-processed",
    "ConfigBucketName": "unit-config",
    "EventBusName": "unit-bus",
    "DvcRemoteUrl": "s3://unit-dvc",
    "ModelsBucketName": "unit-models",
}
RESOURCES = StackResources.from_outputs(OUTPUTS)
DECISION_KEYS = {
    "name",
    "version",
    "metrics",
    "champion_version",
    "reason",
    "run_id",
    "lineage",
    "lineage_files",
}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    registry = Registry()
    registry.install(monkeypatch)
    return registry


def _gate_passed(registry: Registry, version: str, mode: str = "manual") -> None:
    """What the trainer does for a version the gate passed (worker/train_model.py)."""
    registry.add(
        version,
        **{
            "gate.decision": "promote",
            "gate.reason": f"f1_macro beats champion (version {version})",
            champion.APPROVAL_MODE: mode,
            "gate.champion_version": registry.alias or "",
        },
    )
    detail = registry.champions.event_detail(
        "iris", registry.versions[version], registry.tags(version)["gate.reason"]
    )
    registry.champions.decide("iris", version, True, registry.tags(version)["gate.reason"], detail, mode)


# --- The contract --------------------------------------------------------------------------------------


def test_approval_is_auto_unless_the_contract_says_manual() -> None:
    assert parse_contract(datasets.contract_yaml("iris", "iris")).training.approval == "auto"
    text = datasets.contract_yaml("iris", "iris").replace(b"training:", b"training:\n  approval: manual")
    assert parse_contract(text).training.approval == "manual"
    wrong = datasets.contract_yaml("iris", "iris").replace(b"training:", b"training:\n  approval: maybe")
    with pytest.raises(ValidationError, match=r"training\.approval"):
        parse_contract(wrong)


# --- The trainer under manual approval ------------------------------------------------------------------


def test_a_version_that_passes_the_gate_waits_instead_of_being_promoted(registry: Registry) -> None:
    # GIVEN a champion, WHEN a manual-approval version passes the gate
    registry.add("1", promotion="first model")
    registry.alias = registry.pointer = "1"
    _gate_passed(registry, "2")

    # THEN it waits: nothing moved, the request went out with the agreed fields, then its mark
    assert (registry.alias, registry.pointer) == ("1", "1")
    assert registry.tags("2")[champion.AWAITING] == "f1_macro beats champion (version 2)"
    assert "promotion" not in registry.tags("2")
    assert registry.sent_types() == ["ApprovalRequested"]
    request = registry.sent[0][1]
    assert set(request) == set(champion.APPROVAL_REQUEST_KEYS)
    assert (request["version"], request["champion_version"]) == ("2", "1")
    assert registry.tags("2")[champion.PUBLISHED] == "ApprovalRequested"


def test_a_version_that_fails_the_gate_is_rejected_as_under_auto(registry: Registry) -> None:
    _gate_passed(registry, "1")
    registry.add("2", **{"gate.decision": "reject", champion.APPROVAL_MODE: "manual"})
    promoted = registry.champions.decide("iris", "2", False, "worse", {"version": "2"}, "manual")

    assert promoted is False
    assert registry.tags("2")["rejected"] == "worse"
    assert registry.sent_types() == ["ApprovalRequested", "ModelRejected"]
    # a failing version supersedes nothing
    assert registry.tags("1")[champion.AWAITING]
    assert [v.version for v in registry.champions.waiting_versions("iris")] == ["1"]


def test_a_newer_passing_version_supersedes_the_one_still_waiting(registry: Registry) -> None:
    _gate_passed(registry, "1")
    _gate_passed(registry, "2")

    assert registry.tags("1")[champion.SUPERSEDED] == (
        "superseded by version 2, which passed the gate after it"
    )
    assert champion.AWAITING not in registry.tags("1")
    assert [v.version for v in registry.champions.waiting_versions("iris")] == ["2"]
    assert registry.alias is None


def test_an_approval_request_whose_event_failed_is_sent_once_by_the_next_try(registry: Registry) -> None:
    registry.failing.add("publish ApprovalRequested")
    with pytest.raises(ConnectionError):
        _gate_passed(registry, "1")
    assert registry.tags("1")[champion.AWAITING]  # decided, not announced
    assert champion.PUBLISHED not in registry.tags("1")

    outcome = decision.finish_interrupted("iris", "list-1", RESOURCES)
    decision.finish_interrupted("iris", "list-1", RESOURCES)

    assert registry.sent_types() == ["ApprovalRequested"]
    assert outcome is not None and outcome.promoted is False and outcome.trained is False
    assert registry.alias is None


def test_a_dead_trainers_passing_version_is_finished_as_a_request_not_a_promotion(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a version registered with the gate's "promote" under manual approval, then the trainer
    # died before publishing the bundle or tagging anything
    rebuilt: list[str] = []
    registry.bundles = False
    monkeypatch.setattr(
        decision, "publish_from_run", lambda resources, version: rebuilt.append(version.version)
    )
    registry.add("1", **{"gate.decision": "promote", "gate.reason": "first model"})
    registry.add(
        "2",
        **{"gate.decision": "promote", "gate.reason": "better", champion.APPROVAL_MODE: "manual"},
    )

    decision.finish_interrupted("iris", "list-2", RESOURCES)

    # THEN the bundle is rebuilt (approval points serving at it), and the version waits
    assert rebuilt == ["2"]
    assert registry.tags("2")[champion.AWAITING] == "better"
    assert registry.alias is None and registry.sent_types() == ["ApprovalRequested"]
    # AND a version without the mode tag (from before approvals existed) is promoted as before
    decision.finish_interrupted("iris", "list-1", RESOURCES)
    assert registry.alias == "1"


def test_a_dead_trainers_version_is_rejected_if_a_newer_one_waits_meanwhile(registry: Registry) -> None:
    registry.add(
        "1", **{"gate.decision": "promote", "gate.reason": "first", champion.APPROVAL_MODE: "manual"}
    )
    _gate_passed(registry, "2")

    decision.finish_interrupted("iris", "list-1", RESOURCES)

    assert registry.tags("1")["rejected"] == "version 2 passed the gate meanwhile and awaits approval"
    assert [v.version for v in registry.champions.waiting_versions("iris")] == ["2"]


def test_a_crash_between_superseding_and_waiting_is_finished_by_the_next_try(registry: Registry) -> None:
    _gate_passed(registry, "1")
    registry.failing.add(f"tag {champion.AWAITING}")
    with pytest.raises(ConnectionError):
        _gate_passed(registry, "2")
    assert champion.SUPERSEDED in registry.tags("1")
    assert champion.AWAITING not in registry.tags("2")  # undecided: the next try decides it

    decision.finish_interrupted("iris", "list-2", RESOURCES)

    assert [v.version for v in registry.champions.waiting_versions("iris")] == ["2"]
    assert registry.sent_types() == ["ApprovalRequested", "ApprovalRequested"]  # version 1's, then 2's
    # the superseded one, if its own job comes back, stays as it is and announces nothing
    outcome = decision.finish_interrupted("iris", "list-1", RESOURCES)
    assert outcome is not None and outcome.reason.startswith("superseded by version 2")
    assert len(registry.sent) == 2


# --- A person's decision ---------------------------------------------------------------------------------


def test_approve_promotes_the_waiting_version_and_a_second_approve_changes_nothing(
    registry: Registry,
) -> None:
    registry.add("1", promotion="first model")
    registry.alias = registry.pointer = "1"
    _gate_passed(registry, "2")

    done = approval.approve("iris", "2", "alice", "arrival")

    assert (registry.alias, registry.pointer) == ("2", "2")
    assert registry.tags("2")["promotion"] == "approved by alice"
    assert champion.AWAITING not in registry.tags("2")
    detail_type, detail = registry.sent[-1]
    assert detail_type == "ModelPromoted"
    assert set(detail) == DECISION_KEYS
    assert (detail["version"], detail["champion_version"], detail["reason"]) == (
        "2",
        "1",
        "approved by alice",
    )
    assert registry.tags("2")[champion.PUBLISHED] == "ModelPromoted"
    assert done.done_now and "from version 1 to version 2" in done.message

    again = approval.approve("iris", "2", "bob", "arrival")
    assert not again.done_now and "already approved (approved by alice)" in again.message
    assert registry.sent_types() == ["ApprovalRequested", "ModelPromoted"]


def test_an_approval_cut_short_is_finished_by_approving_again(registry: Registry) -> None:
    _gate_passed(registry, "1")
    registry.failing.add("publish ModelPromoted")
    with pytest.raises(ConnectionError):
        approval.approve("iris", "1", "alice", "arrival")
    assert registry.alias == "1" and registry.tags("1")[champion.PUBLISHED] == "ApprovalRequested"

    again = approval.approve("iris", "1", "alice", "arrival")

    assert not again.done_now
    assert registry.sent_types() == ["ApprovalRequested", "ModelPromoted"]
    assert registry.tags("1")[champion.PUBLISHED] == "ModelPromoted"
    # and a redelivered training job would have found nothing left to do
    decision.finish_interrupted("iris", "list-1", RESOURCES)
    assert registry.sent_types() == ["ApprovalRequested", "ModelPromoted"]


def test_an_approval_whose_trainer_retry_comes_first_is_announced_by_it(registry: Registry) -> None:
    _gate_passed(registry, "1")
    registry.failing.add(f"untag {champion.AWAITING}")
    with pytest.raises(ConnectionError):
        approval.approve("iris", "1", "alice", "arrival")

    decision.finish_interrupted("iris", "list-1", RESOURCES)

    assert registry.sent_types() == ["ApprovalRequested", "ModelPromoted"]
    assert registry.alias == "1"


@pytest.mark.parametrize(
    ("setup", "version", "reason"),
    [
        (
            "superseded",
            "1",
            "no longer awaits approval: it was superseded by version 2, which passed the gate",
        ),
        ("superseded", "1", "; version 2 awaits approval"),
        ("auto", "1", "never waited for approval: the gate promoted it (first model)"),
        ("rejected", "1", "was rejected (rejected by bob: too slow); it cannot be approved"),
        ("auto", "9", "model 'iris' has no version 9 (its versions: 1)"),
        ("auto", "two", "is not a version number"),
        ("both_waiting", "1", "no longer the best waiting version: version 2 passed the gate after it"),
        ("champion_moved", "1", "moved to version 2 after version 1 was judged"),
        ("deciding", "1", "is being decided"),
    ],
)
def test_approve_refuses_a_version_that_does_not_wait_with_the_reason(
    registry: Registry, setup: str, version: str, reason: str
) -> None:
    if setup == "auto":
        registry.add("1", promotion="first model")
        registry.alias = "1"
    elif setup == "deciding":
        registry.add("1", **{"gate.decision": "promote"})
    else:
        _gate_passed(registry, "1")
    if setup == "superseded":
        _gate_passed(registry, "2")
    if setup == "rejected":
        approval.reject("iris", "1", "too slow", "bob", "arrival")
    if setup == "both_waiting":  # as a crash between the two steps of superseding leaves them
        registry.add("2", **{champion.AWAITING: "better"})
    if setup == "champion_moved":
        registry.add("2", promotion="rolled in by another way")
        registry.alias = registry.pointer = "2"
    before = (registry.alias, len(registry.sent))

    with pytest.raises(OperationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        approval.approve("iris", version, "alice", "arrival")
    assert (registry.alias, len(registry.sent)) == before


def test_approve_refuses_an_unknown_model(registry: Registry) -> None:
    with pytest.raises(OperationError, match="model 'iris' has no registered version"):
        approval.approve("iris", "1", "alice", "arrival")


def test_reject_tags_the_waiting_version_and_a_second_reject_changes_nothing(registry: Registry) -> None:
    registry.add("1", promotion="first model")
    registry.alias = registry.pointer = "1"
    _gate_passed(registry, "2")

    done = approval.reject("iris", "2", "  drifted inputs ", "bob", "arrival")

    assert registry.tags("2")["rejected"] == "rejected by bob: drifted inputs"
    assert champion.AWAITING not in registry.tags("2")
    assert (registry.alias, registry.pointer) == ("1", "1")
    detail_type, detail = registry.sent[-1]
    assert detail_type == "ModelRejected" and set(detail) == DECISION_KEYS
    assert done.done_now and "the champion stays" in done.message

    again = approval.reject("iris", "2", "other words", "carol", "arrival")
    assert not again.done_now and "rejected by bob" in again.message
    assert registry.sent_types() == ["ApprovalRequested", "ModelRejected"]
    with pytest.raises(OperationError, match="was rejected"):
        approval.approve("iris", "2", "alice", "arrival")


def test_reject_refuses_an_approved_version_and_an_empty_reason(registry: Registry) -> None:
    _gate_passed(registry, "1")
    with pytest.raises(OperationError, match="--reason is empty"):
        approval.reject("iris", "1", " ", "bob", "arrival")
    approval.approve("iris", "1", "alice", "arrival")
    with pytest.raises(OperationError, match=r"was promoted \(approved by alice\); .*arrival rollback"):
        approval.reject("iris", "1", "changed my mind", "bob", "arrival")


def test_waiting_lists_the_versions_still_waiting_newest_first(registry: Registry) -> None:
    _gate_passed(registry, "1")
    _gate_passed(registry, "2")
    registry.add("3", **{champion.AWAITING: "best"})  # as a crash mid-superseding leaves it
    registry.add("4", **{champion.AWAITING: "stale", champion.SUPERSEDED: "superseded by version 5"})

    listed = approval.waiting("iris", "arrival")

    assert [entry["version"] for entry in listed] == ["3", "2"]
    assert listed[1]["reason"] == "f1_macro beats champion (version 2)"
    assert listed[1]["metrics"] == {"f1_macro": 0.9}
    approval.reject("iris", "3", "no", "bob", "arrival")
    approval.reject("iris", "2", "no", "bob", "arrival")  # any waiting version, not only the newest
    assert approval.waiting("iris", "arrival") == []


# --- The commands ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pointed at a cloud on purpose, so the command does not look for a running local one.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("USER", "dana")


@pytest.mark.usefixtures("cli_env")
def test_the_commands_say_what_they_did_in_one_line_and_exit_by_it(registry: Registry) -> None:
    _gate_passed(registry, "1")
    _gate_passed(registry, "2")
    runner = CliRunner()

    refused = runner.invoke(app, ["approve", "--model", "iris", "--version", "1"])
    assert refused.exit_code == 1
    assert "superseded by version 2" in refused.output and len(refused.output.strip().splitlines()) == 1

    approved = runner.invoke(app, ["approve", "--model", "iris", "--version", "2"])
    assert approved.exit_code == 0, approved.output
    assert registry.tags("2")["promotion"] == "approved by dana"  # $USER when --by is not given

    repeated = runner.invoke(app, ["approve", "--model", "iris", "--version", "2", "--by", "erin"])
    assert repeated.exit_code == 0 and "already approved" in repeated.output

    opposite = runner.invoke(app, ["reject", "--model", "iris", "--version", "2", "--reason", "no"])
    assert opposite.exit_code == 1 and "was promoted" in opposite.output


# --- The tracking adapter's new calls, against a real (SQLite) registry ---------------------------------


def test_untag_version_is_idempotent_and_versions_of_lists_every_version(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client.cache_clear()
    try:
        assert tracking.versions_of("iris") == []
        client = tracking.client()
        client.create_registered_model("iris")
        for _ in range(2):
            client.create_model_version("iris", str(tmp_path), tags={champion.AWAITING: "better"})
        tracking.untag_version("iris", "1", champion.AWAITING)
        tracking.untag_version("iris", "1", champion.AWAITING)  # already gone: a no-op

        found = tracking.versions_of("iris")
    finally:
        tracking.client.cache_clear()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert [version.version for version in found] == ["1", "2"]
    assert champion.AWAITING not in found[0].tags and champion.AWAITING in found[1].tags
