"""Hostile object keys through the ingest handler, against moto (reliability issue, hostile files):
'..' segments, 1,024 bytes, unicode, spaces and '+'. Each file is accepted under the model its first
segment names, or quarantined under a key that stays inside the quarantine bucket's layout."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote_plus

import pytest

from common import ingest
from common.layout import quarantine_report_key
from handlers import handle_ingest
from tests import datasets
from tests.unit import test_handle_ingest
from tests.unit.conftest import FakeLambdaContext, load_event
from tests.unit.test_handle_ingest import RAW, FakeStack

stack = test_handle_ingest.stack  # the moto stack of the handler's own tests

BAD = b"a,b\n1,2\n"
LONG_KEY = "iris/" + "k" * (1024 - len("iris/") - len(".csv")) + ".csv"


def _hashed(prefix: str, key: str, suffix: str = ".csv") -> str:
    return f"{prefix}_unsafe-keys/{hashlib.sha256(key.encode()).hexdigest()}{suffix}"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("iris/a.csv", "iris/a.csv"),
        ("iris/données é 📈+1.csv", "iris/données é 📈+1.csv"),
        ("iris/../other/x.csv", _hashed("iris/", "iris/../other/x.csv")),
        ("iris/./x.csv", _hashed("iris/", "iris/./x.csv")),
        ("iris//x.csv.gz", _hashed("iris/", "iris//x.csv.gz", ".csv.gz")),
        ("../x.parquet", _hashed("", "../x.parquet", ".parquet")),
        ("/iris/x.csv", _hashed("", "/iris/x.csv")),
        ("iris/line\nbreak.csv", _hashed("iris/", "iris/line\nbreak.csv")),
        (LONG_KEY, _hashed("iris/", LONG_KEY)),
    ],
)
def test_a_quarantine_key_keeps_the_layout(key: str, expected: str) -> None:
    where = ingest.quarantine_key(key)
    assert where == expected
    assert len(quarantine_report_key(where).encode()) <= 1024


def _event(key: str, version_id: str) -> dict[str, Any]:
    """As S3 sends it: the key URL-encoded, a space as '+' and a '+' as %2B."""
    event = load_event("ingest_sqs_s3_object_created")
    body = json.loads(event["Records"][0]["body"])
    body["Records"][0]["s3"]["object"].update(key=quote_plus(key, safe="/"), versionId=version_id)
    event["Records"][0]["body"] = json.dumps(body)
    return event


def _ingest(stack: FakeStack, key: str, body: bytes, context: FakeLambdaContext) -> None:
    version = stack.s3.put_object(Bucket=RAW, Key=key, Body=body)["VersionId"]
    assert handle_ingest.handler(_event(key, version), context) == {"batchItemFailures": []}


def _report(stack: FakeStack, where: str) -> dict[str, Any]:
    body = stack.s3.get_object(Bucket="unit-quarantine", Key=quarantine_report_key(where))["Body"]
    report: dict[str, Any] = json.loads(body.read())
    return report


def test_valid_files_under_strange_keys_are_accepted_under_the_first_segment(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    keys = [
        "iris/../other/x.csv",
        "iris/données-é.csv",
        "iris/📈 growth 😀.csv",
        "iris/a b+c 50%.csv",
        LONG_KEY,
    ]
    for seed, key in enumerate(keys):
        _ingest(stack, key, datasets.to_csv(datasets.iris_frame(50, seed=seed)), lambda_context)

    accepted = stack.accepted("iris")
    assert accepted is not None
    assert [entry["source"]["key"] for entry in accepted["datasets"]] == keys
    assert stack.accepted("other") is None


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("iris/../other/bad.csv", _hashed("iris/", "iris/../other/bad.csv")),
        (LONG_KEY, _hashed("iris/", LONG_KEY)),
        ("iris/a+b c.csv", "iris/a+b c.csv"),
    ],
)
def test_a_bad_file_under_a_strange_key_is_quarantined_inside_the_layout(
    stack: FakeStack, lambda_context: FakeLambdaContext, key: str, where: str
) -> None:
    _ingest(stack, key, BAD, lambda_context)

    report = _report(stack, where)
    assert report["rule"] == "missing_columns"
    assert report["source"]["key"] == key
    assert report["quarantine_key"] == where
    copy = stack.s3.get_object(Bucket="unit-quarantine", Key=where)["Body"].read()
    assert copy == BAD
    listed = stack.s3.list_objects_v2(Bucket="unit-quarantine").get("Contents", [])
    assert sorted(entry["Key"] for entry in listed) == [where, quarantine_report_key(where)]
