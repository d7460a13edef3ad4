"""Hostile input files, end to end through LocalStack (reliability issue). Each file has one exact
outcome: quarantined under a rule, with a small report that names the problem and carries no live
spreadsheet formula, or accepted under the model its key names. None is retried until the
dead-letter queue, none is lost, and the ingest Lambda stays within its memory and its timeout.

Rerun: uv run pytest tests/e2e/test_hostile_files.py -q (add --log-cli-level=INFO for the timings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import datasets
from tests.e2e.conftest import Pipeline
from tests.helpers import eventually

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

IRIS_HEADER = b"sepal_length,sepal_width,petal_length,petal_width,species\n"
# Far below EventBridge's 256 KB, and small enough to read.
REPORT_BYTES_LIMIT = 16_000


@dataclass(frozen=True)
class Invocation:
    """The ingest Lambda's REPORT line for one file."""

    duration_ms: float
    max_memory_mb: int
    memory_size_mb: int


def _log_events(pipeline: Pipeline, since_ms: int) -> list[str]:
    """The ingest function's log lines since `since_ms`: the group grows all session, and a poll
    that read it whole got slower with every test."""
    logs = pipeline.cloud.client("logs")
    group = f"/aws/lambda/{pipeline.outputs['IngestFunctionName']}"
    messages: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = logs.filter_log_events(logGroupName=group, startTime=since_ms, **token)
        messages += [event["message"] for event in page.get("events", [])]
        if not page.get("nextToken"):
            return messages
        token = {"nextToken": page["nextToken"]}


def _invocation(pipeline: Pipeline, key: str, outcome: str, started: float) -> Invocation:
    """The invocation that logged `outcome` ("dataset quarantined", "dataset accepted") for `key`,
    uploaded at `started` (time.monotonic())."""
    correlation = f"s3://{pipeline.outputs['RawBucketName']}/{key}"
    # The upload's wall-clock time, less a margin for the two clocks' reading.
    since_ms = int((time.time() - (time.monotonic() - started) - 5) * 1000)

    def find() -> Invocation | None:
        messages = _log_events(pipeline, since_ms)
        lines = [json.loads(message) for message in messages if message.startswith("{")]
        ids = [
            line["function_request_id"]
            for line in lines
            if line.get("message") == outcome and line.get("correlation_id") == correlation
        ]
        if not ids:
            return None
        report = re.compile(
            rf"REPORT RequestId: {re.escape(ids[0])}\tDuration: ([\d.]+) ms.*"
            r"\tMemory Size: (\d+) MB\tMax Memory Used: (\d+) MB"
        )
        for message in messages:
            if found := report.match(message):
                return Invocation(float(found[1]), int(found[3]), int(found[2]))
        return None

    return eventually(find, 60, interval=1, what=f"the REPORT line of the invocation for {key}")


def _dead_letters_naming(pipeline: Pipeline, text: str) -> list[str]:
    """Messages in the ingest dead-letter queue that mention `text`, left in place for others."""
    bodies: list[str] = []
    for _ in range(3):
        messages = pipeline.sqs.receive_message(
            QueueUrl=pipeline.outputs["IngestDeadLetterQueueUrl"],
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
        ).get("Messages", [])
        bodies += [message["Body"] for message in messages if text in message["Body"]]
    return bodies


def _bounded(pipeline: Pipeline, key: str, outcome: str, started: float, what: str) -> Invocation:
    """The invocation that handled `key` ran within its memory and its timeout, and nothing about the
    file's model is left in flight or dead-lettered."""
    invocation = _invocation(pipeline, key, outcome, started)
    log.info(
        "%s: %s after %.1f s (Lambda %.0f ms, %d of %d MB)",
        what,
        outcome,
        time.monotonic() - started,
        invocation.duration_ms,
        invocation.max_memory_mb,
        invocation.memory_size_mb,
    )
    assert invocation.max_memory_mb < invocation.memory_size_mb
    assert invocation.duration_ms < 30_000  # the test stack's IngestTimeoutSeconds
    assert eventually(pipeline.ingest_idle, 90, what="the ingest queue to drain")
    assert _dead_letters_naming(pipeline, key.split("/", 1)[0]) == []
    return invocation


def _quarantined(
    pipeline: Pipeline, key: str, body: bytes, put: dict[str, Any], where: str | None = None
) -> dict[str, Any]:
    """The report of a file quarantined once, at `where` (its own key unless said), with its copy."""
    where = where or key
    report = pipeline.quarantine_report(where)
    assert report["source"]["key"] == key
    assert report["source"]["version_id"] == put["VersionId"]
    assert report["quarantine_key"] == where
    assert len(json.dumps(report).encode()) < REPORT_BYTES_LIMIT
    quarantine = pipeline.outputs["QuarantineBucketName"]
    assert pipeline.s3.head_object(Bucket=quarantine, Key=where)["ContentLength"] == len(body)
    versions = pipeline.s3.list_object_versions(Bucket=quarantine, Prefix=f"{where}.report.json")
    assert len(versions.get("Versions", [])) == 1
    assert pipeline.accepted(report["model"]) is None
    assert pipeline.jobs.of(report["model"]) == []
    return report


def _new_model(pipeline: Pipeline, name: str) -> str:
    """A model on the example iris contract, with its default limits (256 MiB)."""
    pipeline.put_contract(name, datasets.contract_yaml("iris", name))
    return name


def _by_rule(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {violation["rule"]: violation for violation in report["violations"]}


def test_formulas_in_a_categorical_column_reach_the_report_inert(pipeline: Pipeline, unique: str) -> None:
    # GIVEN CSV-injection payloads where the species go, and -2 (a number) in a numeric column
    model = _new_model(pipeline, f"formula-{unique}")
    frame = datasets.iris_frame(60).astype({"species": object, "petal_width": object})
    payloads = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(1)", "-2+3"]
    frame.loc[: len(payloads) - 1, "species"] = payloads
    frame.loc[10, "petal_width"] = -2
    key, body = f"{model}/injected.csv", datasets.to_csv(frame)
    started = time.monotonic()

    put = pipeline.upload(key, body)

    # THEN it is quarantined; each payload in the report starts with a quote, the number does not
    report = _quarantined(pipeline, key, body, put)
    violations = _by_rule(report)
    assert report["rule"] == "out_of_range"
    assert violations["unknown_category"]["examples"] == [f"'{payload}" for payload in payloads]
    assert violations["unknown_category"]["columns"] == ["species"]
    assert violations["out_of_range"]["examples"] == ["-2.0"]
    # AND the quarantined copy is the file as it came: only the report is neutralised
    copy = pipeline.s3.get_object(Bucket=pipeline.outputs["QuarantineBucketName"], Key=key)["Body"].read()
    assert copy == body
    _bounded(pipeline, key, "dataset quarantined", started, "formula injection")


# (A Latin-1 byte in an otherwise valid file: tests/unit/test_hostile_reading.py, against the reader.)
@pytest.mark.parametrize(
    ("case", "make_body", "detail"),
    [
        (
            "binary",
            lambda: hashlib.shake_256(b"hostile").digest(200_000),
            r"not UTF-8 text: byte 0x[0-9a-f]{2} at line 1 \(byte \d+ of the CSV text\)",
        ),
    ],
)
def test_bytes_that_are_not_utf_8_are_unreadable_and_the_report_says_where(
    pipeline: Pipeline, unique: str, case: str, make_body: Any, detail: str
) -> None:
    model = _new_model(pipeline, f"encoding-{unique}")
    key, body = f"{model}/{case}.csv", make_body()
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    assert report["rule"] == "unreadable"
    assert re.search(detail, report["violations"][0]["detail"]), report
    _bounded(pipeline, key, "dataset quarantined", started, f"{case} bytes")


def _unsafe(model: str, key: str) -> str:
    return f"{model}/_unsafe-keys/{hashlib.sha256(key.encode()).hexdigest()}.csv"


def _long_key(model: str, name: str) -> str:
    """A key of exactly 1,024 bytes, the most S3 allows."""
    return f"{model}/{name}-" + "k" * (1024 - len(model) - len(name) - 2 - len(".csv")) + ".csv"


def test_valid_files_under_strange_keys_are_accepted_under_the_model_of_their_first_segment(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN a model, and another whose name a '..' segment would reach on a file system
    model = _new_model(pipeline, f"keys-{unique}")
    other = _new_model(pipeline, f"other-{unique}")
    keys = [
        f"{model}/../{other}/dot-dot.csv",
        f"{model}/données-é.csv",
        f"{model}/📈 growth 😀.csv",
        f"{model}/a b+c 50%.csv",  # S3 sends a + as %2B and a space as +: both must come back
        _long_key(model, "long"),
    ]
    assert len(keys[-1].encode()) == 1024
    started = time.monotonic()

    # WHEN each holds valid, distinct rows
    for seed, key in enumerate(keys):
        pipeline.upload(key, datasets.to_csv(datasets.iris_frame(50, seed=seed)))

    # THEN each is accepted under the model its first segment names, its key unchanged
    accepted = pipeline.wait_accepted(model, len(keys))
    assert sorted(entry["source"]["key"] for entry in accepted["datasets"]) == sorted(keys)
    assert all(entry["processed_key"].startswith(f"{model}/data/") for entry in accepted["datasets"])
    assert pipeline.accepted(other) is None
    for key in keys:
        _bounded(pipeline, key, "dataset accepted", started, f"valid file at {key[:60]!r}")


def test_bad_files_under_strange_keys_are_quarantined_inside_the_layout(
    pipeline: Pipeline, unique: str
) -> None:
    model = _new_model(pipeline, f"badkeys-{unique}")
    body = b"a,b\n1,2\n"
    dot_dot, long, plus = f"{model}/../elsewhere/x.csv", _long_key(model, "long"), f"{model}/a+b c.csv"
    expected = {dot_dot: _unsafe(model, dot_dot), long: _unsafe(model, long), plus: plus}
    started = time.monotonic()

    puts = {key: pipeline.upload(key, body) for key in expected}

    for key, where in expected.items():
        report = _quarantined(pipeline, key, body, puts[key], where)
        assert report["rule"] == "missing_columns"
        _bounded(pipeline, key, "dataset quarantined", started, f"bad file at {key[:60]!r}")
    # Nothing landed outside the model's folder, nor under a key with '..' in it.
    listed = pipeline.s3.list_objects_v2(Bucket=pipeline.outputs["QuarantineBucketName"], Prefix=model)
    assert sorted(entry["Key"] for entry in listed["Contents"]) == sorted(
        [*expected.values(), *(f"{where}.report.json" for where in expected.values())]
    )


@pytest.mark.parametrize(
    ("case", "change", "rule", "columns"),
    [
        (
            "names",
            lambda f: f.rename(columns={"sepal_length": "sepalLength", "species": "label"}),
            "missing_columns",
            {"missing_columns": ["sepal_length", "species"], "unexpected_columns": ["label", "sepalLength"]},
        ),
        (
            "types",
            lambda f: f.assign(sepal_length="long", petal_width=pd.Timestamp("2026-01-01")),
            "wrong_type",
            {"wrong_type": ["petal_width", "sepal_length"]},
        ),
    ],
)
def test_a_parquet_file_of_another_schema_is_quarantined_naming_the_columns(
    pipeline: Pipeline, unique: str, case: str, change: Any, rule: str, columns: dict[str, list[str]]
) -> None:
    model = _new_model(pipeline, f"parquet-{unique}")
    key, body = f"{model}/{case}.parquet", datasets.to_parquet(change(datasets.iris_frame(60)))
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    assert report["rule"] == rule
    assert {name: violation["columns"] for name, violation in _by_rule(report).items()} == columns
    _bounded(pipeline, key, "dataset quarantined", started, f"parquet with wrong {case}")


def _parquet_bomb(rows: int) -> bytes:
    """Equal iris rows, which run-length encoding packs into about 20 KB a million."""
    first = datasets.iris_frame(1).iloc[0]
    group = pa.table({name: pa.repeat(pa.scalar(value), 1_000_000) for name, value in first.items()})
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(buffer, group.schema, compression="zstd") as writer:
        for _ in range(rows // len(group)):
            writer.write_table(group)
    return bytes(buffer.getvalue())


def test_a_parquet_file_of_ten_million_equal_rows_is_quarantined_once_decoded_past_the_limit(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN the default limit (256 MiB, compressed or not) and 200 KB of Parquet holding 10 million
    # rows, some 450 MB once decoded
    model = _new_model(pipeline, f"pqbomb-{unique}")
    key, body = f"{model}/bomb.parquet", _parquet_bomb(10_000_000)
    assert len(body) < 2**20
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    assert report["rule"] == "decompressed_too_large"
    assert report["violations"][0]["detail"] == "more than 268435456 bytes once decoded"
    invocation = _bounded(pipeline, key, "dataset quarantined", started, f"parquet of {len(body)} bytes")
    assert invocation.duration_ms < 15_000


def _gzip_bomb(inflated_bytes: int) -> bytes:
    """A valid .csv.gz of well-formed iris rows inflating to more than `inflated_bytes`, built in a
    second: after a full flush, deflate turns the same block into the same bytes, so they are
    repeated instead of compressed again. These rows compress 400 to 1 (deflate stops near 1,000
    to 1), so 4 GiB take 10 MB: "a few KB" cannot inflate to gigabytes in one gzip layer."""
    block = b"5.1,3.5,1.4,0.2,setosa\n" * (1 << 16)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflate.compress(IRIS_HEADER) + deflate.flush(zlib.Z_FULL_FLUSH)
    once = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH) == once
    count = inflated_bytes // len(block) + 1
    crc = zlib.crc32(IRIS_HEADER)
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    size = (len(IRIS_HEADER) + count * len(block)) & 0xFFFFFFFF
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return gzip_header + start + once * count + deflate.flush() + struct.pack("<II", crc, size)


def test_a_gzip_bomb_is_quarantined_while_inflating_within_memory_and_time(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN the default limit (256 MiB, compressed or not) and 10 MB inflating to 4 GiB of rows
    model = _new_model(pipeline, f"bomb-{unique}")
    body = _gzip_bomb(4 * 2**30)
    assert len(body) < 16 * 2**20
    key = f"{model}/bomb.csv.gz"
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    assert report["rule"] == "decompressed_too_large"
    assert report["violations"][0]["detail"] == "more than 268435456 bytes (decompressed too large)"
    invocation = _bounded(pipeline, key, "dataset quarantined", started, f"gzip bomb of {len(body)} bytes")
    assert invocation.duration_ms < 15_000


def test_ten_thousand_columns_are_quarantined_quickly_with_a_short_report(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN the contract's five columns and 9,995 more
    model = _new_model(pipeline, f"wide-{unique}")
    extra = [f"extra_{index:04d}" for index in range(9_995)]
    header = IRIS_HEADER.rstrip(b"\n") + b"," + ",".join(extra).encode() + b"\n"
    row = b"5.1,3.5,1.4,0.2,setosa," + b",".join([b"1"] * len(extra)) + b"\n"
    key, body = f"{model}/wide.csv", header + row * 200
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    [violation] = report["violations"]
    assert violation["rule"] == "unexpected_columns"
    assert violation["columns"] == extra[:20]
    assert violation["columns_omitted"] == 9_975
    assert violation["detail"].endswith("and 9975 more")
    invocation = _bounded(pipeline, key, "dataset quarantined", started, "10,000 columns")
    assert invocation.duration_ms < 10_000


def test_a_100_mb_line_is_quarantined_without_reading_it_whole(pipeline: Pipeline, unique: str) -> None:
    # GIVEN one 100 MB line without a newline (the parser held such a line several times over: 2.7 GB)
    model = _new_model(pipeline, f"longline-{unique}")
    key, body = f"{model}/one-line.csv", b"x" * (100 * 2**20)
    started = time.monotonic()

    put = pipeline.upload(key, body)

    report = _quarantined(pipeline, key, body, put)
    assert report["rule"] == "unreadable"
    assert report["violations"][0]["detail"] == (
        "line 1 is longer than 1048576 bytes; no table row is that long"
    )
    _bounded(pipeline, key, "dataset quarantined", started, "a 100 MB line")
