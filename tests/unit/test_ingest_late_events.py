"""Notifications that arrive late or out of order, in-process against moto."""

from __future__ import annotations

import json

from common import ingest, outcomes
from tests import datasets
from tests.unit.test_handle_ingest import RAW, FakeStack, _upload
from tests.unit.test_handle_ingest import stack as stack  # the fixture


def test_a_late_event_for_a_deleted_version_is_ignored_not_retried(stack: FakeStack) -> None:
    stack.s3.put_object(Bucket=RAW, Key="iris/gone.csv", Body=datasets.to_csv(datasets.iris_frame(50)))
    version = stack.s3.list_object_versions(Bucket=RAW, Prefix="iris/gone.csv")["Versions"][0]["VersionId"]
    stack.s3.delete_object(Bucket=RAW, Key="iris/gone.csv", VersionId=version)

    result = ingest.ingest_object(outcomes.RawObject(RAW, "iris/gone.csv", version))

    assert result.outcome is outcomes.Outcome.ignored
    assert "no longer exists" in result.detail
    assert stack.accepted("iris") is None


def test_an_old_versions_event_after_a_newer_one_judges_each_version_as_it_was(stack: FakeStack) -> None:
    first = _upload(stack, "iris/month.csv", datasets.to_csv(datasets.iris_frame(50)))
    second = _upload(stack, "iris/month.csv", datasets.to_csv(datasets.iris_frame(80)))
    versions = [
        json_record["s3"]["object"]["versionId"]
        for event in (first, second)
        for json_record in json.loads(event["Records"][0]["body"])["Records"]
    ]

    # The newer version's event arrives first, then the older one's.
    newer = ingest.ingest_object(outcomes.RawObject(RAW, "iris/month.csv", versions[1]))
    older = ingest.ingest_object(outcomes.RawObject(RAW, "iris/month.csv", versions[0]))

    assert newer.outcome is older.outcome is outcomes.Outcome.accepted
    accepted = stack.accepted("iris")
    assert accepted is not None
    assert sorted(entry["rows"] for entry in accepted["datasets"]) == [50, 80]
    assert {entry["source"]["version_id"] for entry in accepted["datasets"]} == set(versions)
