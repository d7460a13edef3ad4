"""A file whose S3 notification never reaches ingest still gets its outcome, through the deployed
stack. The test stacks are deployed with `TestDropNotificationsPrefix` (tests/conftest.py): the
ingest function's event source deletes S3's notifications of keys under that prefix before the
function sees them, as Lambda deletes what its filters do not match, so a file uploaded there is one
whose notification was lost. The sweep, invoked through LocalStack as its schedule invokes it (and
scheduled every minute besides), sends ingest one in its place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from common.layout import outcome_key
from localcloud.deploy import load_template
from tests import datasets
from tests.conftest import PROJECT_ROOT, TEST_STACK_PARAMETERS
from tests.e2e.conftest import Pipeline
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

SCHEDULED_EVENT = Path(__file__).resolve().parents[2] / "events" / "sweep_schedule.json"
DROPPED = TEST_STACK_PARAMETERS["TestDropNotificationsPrefix"]
GRACE = float(
    TEST_STACK_PARAMETERS.get(
        "SweepGraceSeconds",
        load_template(PROJECT_ROOT / "template.yaml")["Parameters"]["SweepGraceSeconds"]["Default"],
    )
)
INTERVAL = 60 * float(TEST_STACK_PARAMETERS["SweepIntervalMinutes"])


def _markers(pipeline: Pipeline, key: str, version_id: str) -> list[dict[str, Any]]:
    """Every marker the version has had, oldest first (the processed bucket keeps their versions)."""
    bucket, marker = pipeline.outputs["ProcessedBucketName"], outcome_key(key, version_id)
    versions = pipeline.s3.list_object_versions(Bucket=bucket, Prefix=marker).get("Versions", [])
    # S3 lists a key's versions newest first (their LastModified has whole seconds only).
    return [
        json.loads(pipeline.s3.get_object(Bucket=bucket, Key=marker, VersionId=v["VersionId"])["Body"].read())
        for v in reversed(versions)
        if v["Key"] == marker
    ]


def test_a_file_whose_notification_was_lost_is_found_by_the_sweep_and_accepted(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN two models with contracts: S3's notifications of one's files are deleted unseen
    lost_model, heard_model = f"{DROPPED}{unique}", f"heard-{unique}"
    for model in (lost_model, heard_model):
        pipeline.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN a valid file lands under each
    lost_key, heard_key = f"{lost_model}/may.csv", f"{heard_model}/may.csv"
    lost = pipeline.upload(lost_key, datasets.noisy_iris_csv(80, seed=31))["VersionId"]
    heard = pipeline.upload(heard_key, datasets.noisy_iris_csv(80, seed=32))["VersionId"]
    pipeline.wait_accepted(heard_model, 1)

    # AND the sweep runs, as its schedule runs it, until a pass has taken the lost file for lost
    # (once it is GRACE seconds old and no notification waits in the ingest queue)
    client = pipeline.cloud.session.client(
        "lambda", config=Config(read_timeout=330, retries={"max_attempts": 0})
    )
    swept: list[dict[str, Any]] = []

    def sweep() -> list[dict[str, Any]]:
        invoked = client.invoke(
            FunctionName=pipeline.outputs["SweepFunctionName"], Payload=SCHEDULED_EVENT.read_bytes()
        )
        result: dict[str, Any] = json.loads(invoked["Payload"].read())
        assert "FunctionError" not in invoked, result  # a permission its role lacks shows here
        swept.append(result)
        return _markers(pipeline, lost_key, lost)

    eventually(sweep, GRACE + INTERVAL + 60, interval=3, what="the sweep to re-queue the lost file")

    # THEN the lost file is accepted, that very version, as any file
    accepted = pipeline.wait_accepted(lost_model, 1)
    [entry] = accepted["datasets"]
    assert (entry["source"]["key"], entry["source"]["version_id"]) == (lost_key, lost)

    # AND its first mark is the sweep's: no notification of it ever reached ingest
    def outcome_recorded() -> list[str] | None:
        statuses = [marker["status"] for marker in _markers(pipeline, lost_key, lost)]
        return statuses if len(statuses) > 1 else None

    marks = eventually(outcome_recorded, 30, what="the lost file's outcome")
    assert marks == ["requeued", "accepted"], (marks, swept)
    # AND the file whose notification came was left to it: ingest marked it received, then accepted
    assert [marker["status"] for marker in _markers(pipeline, heard_key, heard)] == ["received", "accepted"]
    assert heard_key not in {entry["key"] for result in swept for entry in result.get("requeued", [])}


def test_the_sweep_runs_on_the_interval_the_stack_was_given(pipeline: Pipeline) -> None:
    events = pipeline.cloud.client("events")
    function = pipeline.cloud.client("lambda").get_function(
        FunctionName=pipeline.outputs["SweepFunctionName"]
    )
    (rule,) = events.list_rule_names_by_target(TargetArn=function["Configuration"]["FunctionArn"])[
        "RuleNames"
    ]
    # The test stacks' SweepIntervalMinutes is 1, which EventBridge wants in the singular.
    assert TEST_STACK_PARAMETERS["SweepIntervalMinutes"] == "1"
    assert events.describe_rule(Name=rule)["ScheduleExpression"] == "rate(1 minute)"
