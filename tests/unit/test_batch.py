"""Batch predictions in-process against moto: which keys are inputs, rows split by the contract, the
columnar ONNX inputs agreeing with serving's, and the handler's outputs and failures. (The same paths
run through LocalStack in tests/e2e/test_batch.py.)"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from moto import mock_aws

from cli import batch as cli_batch
from cli.batch import _csv_parts
from cli.operations import OperationError
from common import batch
from common.adapters import events, s3, sqs
from common.bundle_loader import LoadedBundle, load_bundle
from common.contracts import DataFormat, parse_contract
from common.settings import BatchSettings, get_batch_settings
from common.validation import DatasetRejectedError, validate
from handlers import handle_batch
from tests import datasets, serving_bundles
from tests.unit.conftest import FakeLambdaContext, load_event

INFERENCE = "unit-inference"


# --- which keys are batch inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("iris/input/may.csv", ("iris", "may", DataFormat.csv)),
        ("iris/input/2026/may.csv.gz", ("iris", "2026/may", DataFormat.csv_gz)),
        ("house-prices/input/x.parquet", ("house-prices", "x", DataFormat.parquet)),
    ],
)
def test_a_file_under_input_is_a_batch_input(key: str, expected: tuple[str, str, DataFormat]) -> None:
    found = batch.batch_input(key)

    assert found is not None
    assert (found.model, found.name, found.data_format) == expected
    assert found.predictions_key == f"{expected[0]}/output/{expected[1]}.predictions.parquet"


@pytest.mark.parametrize(
    "key",
    [
        "iris/output/may.predictions.parquet",  # the function's own output: scoring it would loop
        "iris/output/may.manifest.json",
        "iris/input/",
        "iris/input/.csv",
        "iris/input/a/../b.csv",
        "iris/may.csv",
        "Iris/input/may.csv",
        "iris/input/notes.txt",
    ],
)
def test_other_keys_are_not_batch_inputs(key: str) -> None:
    assert batch.batch_input(key) is None


# --- rows split by the contract --------------------------------------------------------------------


def _house_contract() -> Any:
    return batch.feature_contract(parse_contract(datasets.contract_yaml("house-prices", "houses")), 10**9)


def test_rows_breaking_the_contract_are_set_aside_with_their_rule_the_rest_typed() -> None:
    # GIVEN a chunk as the CSV reader gives it (text), with four bad rows among valid ones
    frame = pd.DataFrame(
        {
            "area_m2": ["50", "many", "70", "80", "5", "90"],
            "rooms": ["2", "3", None, "4", "3", "5"],
            "year_built": ["1990", None, "2000", "2001", "1999", None],
            "district": ["north", "south", "east", "nowhere", "west", "centre"],
            "heating": ["gas", None, "oil", "gas", "=cmd()", None],
        }
    )

    # WHEN it is split, as the chunk starting at the file's row 101
    contract = _house_contract()
    split = batch.split_rows(frame, contract, first_row=101)

    # THEN the valid rows are typed as the contract says, in its column order
    assert split.valid["area_m2"].tolist() == [50.0, 90.0]
    assert split.valid["area_m2"].dtype == np.float64
    assert list(split.valid.columns) == list(contract.columns)
    # AND each bad row carries its file row number, its first rule and the columns at fault
    rejected = split.rejected.set_index(batch.REJECT_ROW)
    assert rejected[batch.REJECT_RULE].to_dict() == {
        102: "wrong_type",
        103: "null_values",
        104: "unknown_category",
        105: "out_of_range",
    }
    assert rejected.loc[105, batch.REJECT_COLUMNS] == "area_m2, heating"
    assert rejected.loc[102, "area_m2"] == "many"  # the value as it came
    # AND a value a spreadsheet would evaluate is shown inert in the detail
    assert "'=cmd()" in str(rejected.loc[105, batch.REJECT_DETAIL])


def test_a_clean_chunk_has_no_rejects() -> None:
    frame = datasets.house_frame(20).drop(columns=["price"]).astype(str)

    split = batch.split_rows(frame.replace({"nan": None, "None": None}), _house_contract(), first_row=1)

    assert len(split.valid) == 20
    assert split.rejected.empty


# --- the same ONNX answers as serving --------------------------------------------------------------


def _loaded(base: str, family: str | None = None) -> tuple[LoadedBundle, serving_bundles.Trained]:
    trained = serving_bundles.trained(base, f"batch-{base}", family)
    manifest = serving_bundles.manifest_of(trained, "1")
    return load_bundle(serving_bundles.pointer_to(manifest), manifest, trained.onnx), trained


@pytest.mark.parametrize("base", ["iris", "house-prices"])
def test_columnar_inputs_give_what_serving_answers_for_the_same_records(base: str) -> None:
    # GIVEN a real bundle and rows with missing values (house prices)
    model, trained = _loaded(base)
    features = trained.contract.features
    frame = (datasets.iris_frame(40, seed=3) if base == "iris" else datasets.house_frame(40, seed=3))[
        features
    ]

    # WHEN the batch path scores them, and serving's path scores the same rows as records
    scored = batch.predict_frame(model, frame)
    served = model.predict(serving_bundles.request_records(frame, trained.contract))

    # THEN predictions (and probabilities) are the same, with the version on each row
    assert scored[batch.PREDICTION].tolist() == served.values.tolist()
    if served.probabilities is not None:
        columns = [f"{batch.PROBABILITY_PREFIX}{name}" for name in model.class_names or ()]
        np.testing.assert_array_equal(scored[columns].to_numpy(), served.probabilities)
    assert set(scored[batch.MODEL_VERSION]) == {"1"}
    assert list(scored.columns[: len(features)]) == features


# --- the handler against moto ----------------------------------------------------------------------


@dataclass
class FakeStack:
    s3: Any
    sqs: Any
    dead_letters: str
    published: list[tuple[str, dict[str, Any]]]

    def upload(self, key: str, body: bytes) -> dict[str, Any]:
        version = self.s3.put_object(Bucket=INFERENCE, Key=key, Body=body)["VersionId"]
        event = load_event("ingest_sqs_s3_object_created")
        record = event["Records"][0]
        notification = json.loads(record["body"])
        notification["Records"][0]["s3"]["bucket"]["name"] = INFERENCE
        notification["Records"][0]["s3"]["object"].update(key=key.replace(" ", "+"), versionId=version)
        record["body"] = json.dumps(notification)
        return {"Records": [record]}

    def parquet(self, key: str) -> pd.DataFrame:
        body = self.s3.get_object(Bucket=INFERENCE, Key=key)["Body"].read()
        return pd.read_parquet(io.BytesIO(body))

    def json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=INFERENCE, Key=key)["Body"].read())

    def keys(self) -> list[str]:
        return [entry["Key"] for entry in self.s3.list_objects_v2(Bucket=INFERENCE).get("Contents", [])]

    def dead_lettered(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.dead_letters, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        return found


def _clear_clients() -> None:
    for cached in (s3.s3_client, sqs.sqs_client, events.events_client, get_batch_settings):
        cached.cache_clear()
    batch._loaded.cache_clear()


@pytest.fixture
def stack(aws_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeStack]:
    _clear_clients()
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "publish", lambda _bus, kind, detail: published.append((kind, detail)))
    with mock_aws():
        s3_client = boto3.client("s3")
        for bucket in (INFERENCE, "unit-config", serving_bundles.MODELS_BUCKET):
            s3_client.create_bucket(Bucket=bucket)
        s3_client.put_bucket_versioning(Bucket=INFERENCE, VersioningConfiguration={"Status": "Enabled"})
        sqs_client = boto3.client("sqs")
        dead_letters = sqs_client.create_queue(QueueName="batch-dlq")["QueueUrl"]
        for name, value in {
            "CONFIG_BUCKET": "unit-config",
            "MODELS_BUCKET": serving_bundles.MODELS_BUCKET,
            "EVENT_BUS_NAME": "bus",
            "BATCH_DEAD_LETTER_QUEUE_URL": dead_letters,
            "BATCH_MAX_RECEIVE_COUNT": "2",
            "BATCH_CHUNK_ROWS": "7",  # several chunks even for small files
            "BATCH_SCRATCH_DIR": str(tmp_path),
            "POWERTOOLS_METRICS_NAMESPACE": "Arrival",
        }.items():
            monkeypatch.setenv(name, value)
        for base in ("iris", "house-prices"):
            trained = serving_bundles.trained(base, f"batch-{base}")
            s3_client.put_object(
                Bucket="unit-config",
                Key=f"contracts/batch-{base}.yaml",
                Body=datasets.contract_yaml(base, f"batch-{base}"),
            )
        serving_bundles.publish(s3_client, trained, "4")  # house prices has a champion, iris none
        yield FakeStack(s3_client, sqs_client, dead_letters, published)
    _clear_clients()


def _houses_with_bad_rows() -> pd.DataFrame:
    frame = datasets.house_frame(30, seed=8).drop(columns=["price"])
    frame.loc[3, "area_m2"] = -5.0
    frame.loc[17, "district"] = "atlantis"
    return frame


@pytest.mark.parametrize(
    ("suffix", "encode"),
    [("csv", datasets.to_csv), ("csv.gz", datasets.to_csv_gz), ("parquet", datasets.to_parquet)],
)
def test_a_file_is_scored_with_its_bad_rows_set_aside(
    stack: FakeStack, lambda_context: FakeLambdaContext, suffix: str, encode: Any
) -> None:
    # GIVEN a file of 30 rows, two of them breaking the contract
    event = stack.upload(f"batch-house-prices/input/may {suffix}.{suffix}", encode(_houses_with_bad_rows()))

    # WHEN the function gets its notification
    response = handle_batch.handler(event, lambda_context)

    # THEN the 28 good rows are scored by the champion, the 2 others rejected with their rule
    assert response == {"batchItemFailures": []}
    output = f"batch-house-prices/output/may {suffix}"
    predictions = stack.parquet(f"{output}.predictions.parquet")
    assert len(predictions) == 28
    assert set(predictions[batch.MODEL_VERSION]) == {"4"}
    assert predictions[batch.PREDICTION].notna().all()
    assert {"area_m2", "district", "heating"} <= set(predictions.columns)
    rejects = stack.parquet(f"{output}.rejects.parquet")
    assert dict(zip(rejects[batch.REJECT_ROW], rejects[batch.REJECT_RULE], strict=True)) == {
        4: "out_of_range",
        18: "unknown_category",
    }
    # AND the manifest gives the rows, the version, the timings and the source's version id
    manifest = stack.json(f"{output}.manifest.json")
    assert manifest["rows"] == {"read": 30, "scored": 28, "rejected": 2}
    assert manifest["version"] == "4"
    assert manifest["source"]["version_id"]
    assert manifest["timings"]["total_seconds"] > 0
    # a time like every other arrival writes: ISO 8601, UTC
    assert datetime.fromisoformat(manifest["finished_at"]).utcoffset() == timedelta(0)
    assert [v["rule"] for v in manifest["violations"]] == ["out_of_range", "unknown_category"]
    # AND BatchCompleted says so
    ((kind, detail),) = stack.published
    assert kind == "BatchCompleted"
    assert (detail["rows_scored"], detail["rows_rejected"], detail["version"]) == (28, 2, "4")
    assert detail["output"] == f"s3://{INFERENCE}/{output}.predictions.parquet"


def test_a_file_without_bad_rows_has_no_rejects_file(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    frame = datasets.house_frame(12, seed=2).drop(columns=["price"])

    handle_batch.handler(
        stack.upload("batch-house-prices/input/ok.csv", datasets.to_csv(frame)), lambda_context
    )

    assert sorted(stack.keys()) == [
        "batch-house-prices/input/ok.csv",
        "batch-house-prices/output/ok.manifest.json",
        "batch-house-prices/output/ok.predictions.parquet",
    ]
    assert stack.published[0][1]["rejects"] is None


def _assert_failed(stack: FakeStack, key: str, rule: str) -> str:
    """The failure is reported three ways; returns the reason."""
    target = batch.batch_input(key)
    assert target is not None
    model = target.model
    report = stack.json(target.failure_key)
    assert report["rule"] == rule
    ((kind, detail),) = stack.published
    assert kind == "BatchFailed"
    assert detail["name"] == model and detail["input"].startswith(f"s3://{INFERENCE}/{key}?versionId=")
    (message,) = stack.dead_lettered()
    reason: str = message["MessageAttributes"]["failure_reason"]["StringValue"]
    assert reason == detail["reason"] and reason.startswith(rule)
    assert key.replace(" ", "+") in message["Body"]  # the notification itself, to replay
    return reason


def test_a_model_without_a_champion_fails_clearly(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    event = stack.upload("batch-iris/input/may.csv", datasets.to_csv(datasets.iris_frame(10)))

    response = handle_batch.handler(event, lambda_context)

    assert response == {"batchItemFailures": []}  # nothing to retry: it is in the dead-letter queue
    reason = _assert_failed(stack, "batch-iris/input/may.csv", "no_champion")
    assert "pointers/batch-iris.json" in reason


def test_a_champion_whose_bundle_is_missing_fails_the_file_as_refused(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    stack.s3.delete_object(
        Bucket=serving_bundles.MODELS_BUCKET, Key="bundles/batch-house-prices/4/model.onnx"
    )
    frame = datasets.house_frame(10).drop(columns=["price"])

    handle_batch.handler(
        stack.upload("batch-house-prices/input/x.csv", datasets.to_csv(frame)), lambda_context
    )

    reason = _assert_failed(stack, "batch-house-prices/input/x.csv", "bundle_refused")
    assert "no ONNX model at" in reason


def test_a_file_with_wrong_columns_fails_as_a_whole(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    frame = datasets.house_frame(10).drop(columns=["price", "rooms"])

    handle_batch.handler(
        stack.upload("batch-house-prices/input/x.csv", datasets.to_csv(frame)), lambda_context
    )

    reason = _assert_failed(stack, "batch-house-prices/input/x.csv", "missing_columns")
    assert "rooms" in reason


def test_a_file_with_the_target_column_is_refused_naming_it(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    frame = datasets.house_frame(10)

    handle_batch.handler(
        stack.upload("batch-house-prices/input/x.csv", datasets.to_csv(frame)), lambda_context
    )

    assert "price" in _assert_failed(stack, "batch-house-prices/input/x.csv", "unexpected_columns")


def test_a_file_too_large_for_one_invocation_is_refused_with_how_to_split_it(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_MAX_FILE_BYTES", "1000")
    get_batch_settings.cache_clear()
    body = datasets.to_csv(datasets.house_frame(100).drop(columns=["price"]))

    handle_batch.handler(stack.upload("batch-house-prices/input/big.csv", body), lambda_context)

    reason = _assert_failed(stack, "batch-house-prices/input/big.csv", "file_too_large")
    assert f"split it into {-(-len(body) // 1000)} or more files" in reason
    assert "header line" in reason


def test_a_file_that_would_outlast_the_invocation_stops_in_time_saying_how_to_split(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an invocation with less time left than the margin batch keeps for itself
    monkeypatch.setattr(FakeLambdaContext, "get_remaining_time_in_millis", staticmethod(lambda: 20_000))
    body = datasets.to_csv(datasets.house_frame(30).drop(columns=["price"]))

    handle_batch.handler(stack.upload("batch-house-prices/input/slow.csv", body), lambda_context)

    reason = _assert_failed(stack, "batch-house-prices/input/slow.csv", "out_of_time")
    assert "after 7 rows" in reason and "split it into files of at most" in reason


def test_the_functions_own_outputs_are_ignored(stack: FakeStack, lambda_context: FakeLambdaContext) -> None:
    event = stack.upload("batch-house-prices/output/may.predictions.parquet", b"PAR1")

    assert handle_batch.handler(event, lambda_context) == {"batchItemFailures": []}

    assert stack.keys() == ["batch-house-prices/output/may.predictions.parquet"]
    assert stack.published == []


def test_an_unexpected_error_is_retried_then_reported_on_the_last_delivery(
    stack: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the models bucket failing in a way no retry can tell from a transient one
    def broken(*_: Any) -> None:
        raise ConnectionError("models bucket unreachable")

    monkeypatch.setattr(batch, "load_champion", broken)
    event = stack.upload("batch-house-prices/input/may.csv", datasets.to_csv(datasets.house_frame(5)))

    # WHEN it is delivered the first time, then the last time (BATCH_MAX_RECEIVE_COUNT=2)
    # THEN the first fails (every record of the batch did: powertools raises), for SQS to deliver again
    with pytest.raises(BatchProcessingError):
        handle_batch.handler(event, lambda_context)
    assert stack.published == []
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "2"
    last = handle_batch.handler(event, lambda_context)

    # AND the last is reported with its reason
    assert last == {"batchItemFailures": []}
    assert "models bucket unreachable" in _assert_failed(stack, "batch-house-prices/input/may.csv", "error")


def test_settings_are_read_from_the_functions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CONFIG_BUCKET": "c",
        "MODELS_BUCKET": "m",
        "EVENT_BUS_NAME": "b",
        "BATCH_MAX_FILE_BYTES": "2048",
    }.items():
        monkeypatch.setenv(name, value)

    settings = BatchSettings()  # type: ignore[call-arg]

    assert (settings.models_bucket, settings.max_file_bytes, settings.dead_letter_queue_url) == (
        "m",
        2048,
        None,
    )


def test_text_in_a_numeric_column_reads_the_file_again_row_by_row(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN a CSV whose numeric column holds a word in one row, past the first chunk
    frame = datasets.house_frame(20, seed=4).drop(columns=["price"]).astype(object)
    frame.loc[9, "rooms"] = "many"

    # WHEN it is scored
    handle_batch.handler(
        stack.upload("batch-house-prices/input/t.csv", datasets.to_csv(frame)), lambda_context
    )

    # THEN that row alone is rejected, as wrong_type, and the others scored once each
    rejects = stack.parquet("batch-house-prices/output/t.rejects.parquet")
    assert rejects[[batch.REJECT_ROW, batch.REJECT_RULE]].values.tolist() == [[10, "wrong_type"]]
    assert len(stack.parquet("batch-house-prices/output/t.predictions.parquet")) == 19


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"area_m2": 5.0},  # below the minimum
        {"rooms": np.nan},  # missing in a non-nullable column
        {"district": "atlantis"},
        {"heating": None},  # nullable: fine
        {"year_built": np.nan},  # nullable: fine
    ],
)
def test_the_vectorised_shortcut_never_passes_a_chunk_pandera_would_refuse(change: dict[str, Any]) -> None:
    # GIVEN a typed chunk, with one value changed
    contract = _house_contract()
    frame = datasets.house_frame(30, seed=6).drop(columns=["price"])[list(contract.columns)]
    for name, value in change.items():
        frame.loc[4, name] = value

    # WHEN it is split
    split = batch.split_rows(frame, contract, first_row=1)

    # THEN the shortcut and pandera agree: the same rows are refused either way
    assert batch._plainly_valid(frame, contract) == split.rejected.empty
    try:
        validated = validate(frame, contract)
    except DatasetRejectedError:
        validated = None
    assert (validated is not None) == split.rejected.empty


def test_a_large_csv_is_split_into_parts_each_with_the_header(tmp_path: Path) -> None:
    # GIVEN a CSV with a quoted field spanning two lines
    rows = [b"a,b\n"] + [f"{i},x{i}\n".encode() for i in range(50)] + [b'50,"two\nlines"\n', b"51,end\n"]
    source = tmp_path / "big.csv"
    source.write_bytes(b"".join(rows))
    scratch = tmp_path / "parts"
    scratch.mkdir()

    # WHEN it is split into parts of at most 60 bytes
    parts = list(_csv_parts(source, 60, scratch))

    # THEN each part starts with the header, none is over the limit (bar a row that alone is), and
    # together they hold every row once, the quoted one whole
    assert len(parts) > 5
    frames = [pd.read_csv(part) for part in parts]
    assert all(part.read_bytes().startswith(b"a,b\n") for part in parts)
    assert all(part.stat().st_size <= 60 for part in parts)
    joined = pd.concat(frames, ignore_index=True)
    assert joined["a"].tolist() == list(range(52))
    assert joined.loc[50, "b"] == "two\nlines"


def test_a_second_notification_of_the_same_version_scores_nothing_again(
    stack: FakeStack, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN a file scored once
    frame = datasets.house_frame(12, seed=2).drop(columns=["price"])
    event = stack.upload("batch-house-prices/input/twice.csv", datasets.to_csv(frame))
    handle_batch.handler(event, lambda_context)
    manifest = stack.json("batch-house-prices/output/twice.manifest.json")

    # WHEN S3 delivers the same notification again
    handle_batch.handler(event, lambda_context)

    # THEN nothing is written or announced twice
    assert stack.json("batch-house-prices/output/twice.manifest.json") == manifest
    assert [kind for kind, _ in stack.published] == ["BatchCompleted"]
    # AND a new version of the file is scored
    handle_batch.handler(
        stack.upload("batch-house-prices/input/twice.csv", datasets.to_csv(frame)), lambda_context
    )
    assert [kind for kind, _ in stack.published] == ["BatchCompleted", "BatchCompleted"]


def test_submit_splits_a_large_csv_and_wait_returns_each_parts_outcome(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        cli_batch,
        "outputs_of",
        lambda _: {"InferenceBucketName": INFERENCE, "ConfigBucketName": "unit-config"},
    )
    # GIVEN a CSV about three times the part size
    source = tmp_path / "june.csv"
    source.write_bytes(datasets.to_csv(datasets.house_frame(60).drop(columns=["price"])))
    part_bytes = source.stat().st_size // 3 + 100

    # WHEN it is submitted
    submitted = cli_batch.submit_batch(source, "batch-house-prices", "unit", max_part_bytes=part_bytes)

    # THEN it lands as parts under input/, each a CSV with the header, together every row
    assert [part.key for part in submitted.parts] == [
        f"batch-house-prices/input/june-part-{n:04d}.csv" for n in range(1, len(submitted.parts) + 1)
    ]
    assert len(submitted.parts) >= 3
    bodies = [stack.s3.get_object(Bucket=INFERENCE, Key=part.key)["Body"].read() for part in submitted.parts]
    assert sum(len(pd.read_csv(io.BytesIO(body))) for body in bodies) == 60
    # AND waiting gives each part's manifest or failure report, for this very upload only
    first, *others = submitted.parts
    stack.s3.put_object(
        Bucket=INFERENCE,
        Key=first.output_key("failure.json"),
        Body=json.dumps({"source": {"version_id": first.version_id}, "rule": "no_champion"}),
    )
    for part in others:
        stack.s3.put_object(
            Bucket=INFERENCE,
            Key=part.output_key("manifest.json"),
            Body=json.dumps({"source": {"version_id": part.version_id}, "rows": {"scored": 20}}),
        )
    outcomes = cli_batch.wait_batch(submitted, timeout=5)
    assert [outcome.ok for outcome in outcomes] == [False] + [True] * len(others)
    assert outcomes[0].failure == {"source": {"version_id": first.version_id}, "rule": "no_champion"}


def test_submit_refuses_a_model_without_a_contract(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        cli_batch,
        "outputs_of",
        lambda _: {"InferenceBucketName": INFERENCE, "ConfigBucketName": "unit-config"},
    )
    source = tmp_path / "x.csv"
    source.write_bytes(b"a\n1\n")

    with pytest.raises(OperationError, match="no contract"):
        cli_batch.submit_batch(source, "nobody", "unit")


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (datasets.gzip_bomb(2_000_000), "decompressed_too_large"),
        (b"\x1f\x8b\x08\x00 not really gzip", "unreadable"),
    ],
    ids=["bomb", "corrupt"],
)
def test_a_bad_gzip_fails_as_a_whole_at_once(
    stack: FakeStack,
    lambda_context: FakeLambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    rule: str,
) -> None:
    monkeypatch.setenv("BATCH_MAX_FILE_BYTES", "100000")
    get_batch_settings.cache_clear()

    response = handle_batch.handler(stack.upload("batch-house-prices/input/z.csv.gz", body), lambda_context)

    assert response == {"batchItemFailures": []}  # the file's fault: not delivered again
    _assert_failed(stack, "batch-house-prices/input/z.csv.gz", rule)
