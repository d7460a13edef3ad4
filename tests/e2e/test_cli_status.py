"""`arrival status` reads the deployed stack from outside, model by model: what ingest accepted and
quarantined (by rule), what sits in the dead-letter queues, and what to do about it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import Result

from tests import datasets
from tests.conftest import INGEST_STACK, LocalCloud
from tests.e2e.conftest import Pipeline, arrival

pytestmark = pytest.mark.e2e


def _status(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, *args: str, stack: str = INGEST_STACK
) -> Result:
    return arrival(cloud, monkeypatch, "status", "--stack-name", stack, *args)


def _model(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(model for model in report["stack"]["models"] if model["name"] == name)


def test_status_counts_data_by_rule_and_dead_letters_by_model(
    local_cloud: LocalCloud, pipeline: Pipeline, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model with one accepted file, two quarantined ones (two rules), and a dead-lettered job
    model = f"status-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    pipeline.upload(f"{model}/good.csv", datasets.to_csv(datasets.iris_frame(60, seed=1)))
    out_of_range = datasets.iris_frame(60, seed=2)
    out_of_range.loc[3, "sepal_width"] = 42.0
    pipeline.upload(f"{model}/range.csv", datasets.to_csv(out_of_range))
    pipeline.upload(f"{model}/short.csv", datasets.to_csv(datasets.iris_frame(3, seed=3)))
    pipeline.wait_accepted(model, 1)
    pipeline.quarantine_report(f"{model}/range.csv")
    pipeline.quarantine_report(f"{model}/short.csv")
    pipeline.sqs.send_message(
        QueueUrl=pipeline.outputs["TrainingDeadLetterQueueUrl"],
        MessageBody=json.dumps({"model": model}),
        MessageGroupId=model,
        MessageDeduplicationId=unique,
    )

    unsent_event = {
        "version": "0",
        "id": unique,
        "detail-type": "ModelRolledBack",
        "source": "arrival",
        "account": "000000000000",
        "time": "2026-11-29T10:00:00Z",
        "region": pipeline.cloud.settings.region,
        "resources": [],
        "detail": {"name": model, "version": "1", "from_version": "2", "reason": "status test"},
    }
    notify_dead_letters = pipeline.outputs["NotificationDeadLetterQueueUrl"]
    pipeline.sqs.send_message(QueueUrl=notify_dead_letters, MessageBody=json.dumps(unsent_event))

    # WHEN the operator asks for the status, for scripts and for people
    as_json = _status(local_cloud, monkeypatch, "--json")
    on_screen = _status(local_cloud, monkeypatch)

    # THEN the JSON holds the counts, by rule and by model, and what to do about the dead letter
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["target"] == "local"
    status = _model(report, model)
    assert status["contract"] is True
    assert status["datasets"]["accepted"] == 1
    assert status["datasets"]["rows"] == 60
    assert status["datasets"]["quarantined"] == {"out_of_range": 1, "too_few_rows": 1}
    assert status["jobs"] == {
        "ingest_dead_letters": 0,
        "training_dead_letters": 1,
        "training_failure": None,  # this one was sent without a reason
    }
    assert status["versions"] == [] and status["champion"] is None
    assert any("arrival redrive training" in problem for problem in status["problems"])
    assert report["stack"]["queues"]["training"]["dead_letters"] >= 1

    # AND above the models, what waits in the stack's other dead-letter queues (a notification the
    # topic refused, sent here as EventBridge sends one), with the command that deals with it
    assert report["stack"]["unsent"]["notifications"] >= 1
    assert any("`arrival redrive notify`" in problem for problem in report["stack"]["problems"])

    # AND the screen says the same in words, and peeking left the dead letter where it was
    assert on_screen.exit_code == 0, on_screen.output
    printed = " ".join(on_screen.output.split())
    assert f"{model} datasets: 1 accepted (60 rows), 2 quarantined" in printed
    assert "(out_of_range 1, too_few_rows 1)" in printed
    assert "1 training job(s) dead-lettered" in printed
    assert "notification(s) could not be sent" in printed
    assert (
        _model(json.loads(_status(local_cloud, monkeypatch, "--json").output), model)["jobs"][
            "training_dead_letters"
        ]
        == 1
    )


def test_status_of_a_stack_not_deployed_says_to_deploy(
    local_cloud: LocalCloud, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _status(local_cloud, monkeypatch, stack=f"absent-{unique}")
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "local cloud: ready" in printed
    assert f"stack absent-{unique}: no stack named absent-{unique}: run `arrival deploy`" in printed
