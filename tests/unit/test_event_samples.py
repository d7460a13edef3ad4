"""events/ holds a sample of every event the chain emits, in the shape the code sends it: a sample
that drifts from the code fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from common.validation import Rule, Violation

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
SOURCES = [*ROOT.glob("common/**/*.py"), *ROOT.glob("worker/**/*.py"), *ROOT.glob("cli/**/*.py")]
ENVELOPE = {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}


def _samples() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in EVENTS.glob("event_*.json"):
        event = json.loads(path.read_text())
        found[event["detail-type"]] = event
    return found


def _published_types() -> set[str]:
    """Every detail-type the code hands to events.publish, and the gate's two decisions."""
    text = "\n".join(path.read_text() for path in SOURCES)
    direct = re.findall(r'events\.publish\(\s*[^,]+,\s*"([A-Za-z]+)"', text)
    # The champion's lifecycle (common/champion.py) publishes through its port, and names the
    # event of each decision beside its tag.
    direct += re.findall(r'self\.publish\(\s*"([A-Za-z]+)"', text)
    direct += re.findall(r'_announce_decision\([^)]*?"([A-Za-z]+)"', text)
    direct += re.findall(r'\(\s*(?:PROMOTION|REJECTED|AWAITING),\s*"([A-Za-z]+)"\s*\)', text)
    decided = re.findall(r'"([A-Za-z]+)" if promote else "([A-Za-z]+)"', text)
    return set(direct) | {name for pair in decided for name in pair}


def test_every_event_the_chain_emits_has_a_sample() -> None:
    published = _published_types()
    assert {
        "DatasetQuarantined",
        "ModelPromoted",
        "ModelRejected",
        "TrainingFailed",
        "ModelRolledBack",
        "ApprovalRequested",
        "DriftDetected",
    } <= published
    assert published <= set(_samples()), f"no sample in events/ for {sorted(published - set(_samples()))}"


@pytest.mark.parametrize("detail_type", sorted(_samples()))
def test_a_sample_is_an_eventbridge_event_from_arrival(detail_type: str) -> None:
    event = _samples()[detail_type]
    assert set(event) == ENVELOPE
    assert event["source"] == "arrival"


def test_the_quarantine_sample_has_the_reports_shape() -> None:
    detail = _samples()["DatasetQuarantined"]["detail"]
    assert Rule(detail["rule"])
    for violation in detail["violations"]:
        assert (
            violation
            == Violation(
                Rule(violation["rule"]), **{key: value for key, value in violation.items() if key != "rule"}
            ).as_dict()
        )


def test_decision_samples_carry_what_the_trainer_sends() -> None:
    keys = {"name", "version", "metrics", "champion_version", "reason", "run_id", "lineage", "lineage_files"}
    for detail_type in ("ModelPromoted", "ModelRejected"):
        assert set(_samples()[detail_type]["detail"]) == keys
    decision = (ROOT / "common" / "champion.py").read_text() + (
        ROOT / "worker" / "train_model.py"
    ).read_text()
    for key in keys:
        assert f'"{key}"' in decision, key


def test_the_approval_request_sample_carries_the_agreed_fields() -> None:
    from common.champion import APPROVAL_REQUEST_KEYS

    assert set(_samples()["ApprovalRequested"]["detail"]) == set(APPROVAL_REQUEST_KEYS)


def test_the_drift_sample_carries_what_the_drift_report_sends() -> None:
    # tests/unit/test_monitoring.py checks common/monitoring.py sends exactly these fields.
    detail = _samples()["DriftDetected"]["detail"]
    assert set(detail) == {"name", "version", "kind", "drifted_columns", "report", "summary"}
    assert detail["kind"] in {"training_data", "live_traffic"}
