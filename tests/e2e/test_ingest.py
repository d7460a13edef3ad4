"""Ingest end to end: files dropped in the raw bucket, processed by the ingest Lambda that LocalStack
runs, with each test on a model of its own."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from tests import datasets
from tests.conftest import INGEST_STACK, PROJECT_ROOT, TEST_STACK_PARAMETERS, LocalCloud
from tests.e2e.conftest import Pipeline, _pipeline
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_a_valid_csv_is_processed_accepted_and_queued_as_one_training_job(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN a model with a contract
    model = f"iris-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    frame = datasets.iris_frame(150)
    duplicated = pd.concat([frame, frame.head(10)])  # ten repeated rows, to be dropped

    # WHEN a valid CSV lands under the model's prefix
    put = pipeline.upload(f"{model}/batch 1.csv", datasets.to_csv(duplicated))

    # THEN the accepted-data list names it, with its lineage
    accepted = pipeline.wait_accepted(model, 1)
    entry = accepted["datasets"][0]
    assert entry["source"]["key"] == f"{model}/batch 1.csv"
    assert entry["source"]["version_id"] == put["VersionId"]
    assert entry["rows_read"] == 160
    assert entry["rows"] == 150
    assert entry["duplicate_rows_dropped"] == 10
    assert len(entry["contract_hash"]) == 64

    # AND the processed Parquet holds the typed, de-duplicated rows under a content-addressed key
    body = pipeline.s3.get_object(Bucket=pipeline.outputs["ProcessedBucketName"], Key=entry["processed_key"])
    processed = pd.read_parquet(io.BytesIO(body["Body"].read()))
    assert entry["processed_key"] == f"{model}/data/{entry['content_hash']}.parquet"
    assert len(processed) == 150
    assert processed["sepal_length"].dtype == "float64"

    # AND one training job names the model, grouped by it
    jobs = eventually(lambda: pipeline.jobs.of(model), 30, what="a training job")
    assert [job["body"] for job in jobs] == [{"model": model}]
    assert jobs[0]["attributes"]["MessageGroupId"] == model

    # (That one trainer instance is started for it, with the worker's user data, is shown on a stack
    # of its own: test_ten_concurrent_uploads_start_exactly_one_trainer. Here any earlier test's
    # trainer would do.)


def test_categorical_features_with_na_and_other_formats_are_accepted(pipeline: Pipeline, unique: str) -> None:
    # GIVEN a regression model with categorical features, some missing (NA)
    model = f"houses-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("house-prices", model))
    frame = datasets.house_frame(300)
    assert frame["heating"].isna().any()

    # WHEN the data comes as gzip-compressed CSV and as Parquet
    pipeline.upload(f"{model}/part-1.csv.gz", datasets.to_csv_gz(frame.iloc[:150]))
    pipeline.upload(f"{model}/part-2.parquet", datasets.to_parquet(frame.iloc[150:]))

    # THEN both are accepted, and missing values stay missing
    accepted = pipeline.wait_accepted(model, 2)
    keys = sorted(entry["source"]["key"] for entry in accepted["datasets"])
    assert keys == [f"{model}/part-1.csv.gz", f"{model}/part-2.parquet"]
    entry = next(entry for entry in accepted["datasets"] if entry["source"]["key"].endswith(".csv.gz"))
    body = pipeline.s3.get_object(Bucket=pipeline.outputs["ProcessedBucketName"], Key=entry["processed_key"])
    processed = pd.read_parquet(io.BytesIO(body["Body"].read()))
    assert processed["heating"].isna().sum() == frame.iloc[:150]["heating"].isna().sum()


# One bad file of each family of rules, through the deployed function: the columns, the values, the
# file as a whole, bytes that are no table, and a bomb. Every rule runs through the handler in
# tests/unit/test_handle_ingest.py.
BAD_FILE_FAMILIES = ["missing column", "out of range", "empty file", "garbled csv", "gzip bomb"]


@pytest.mark.parametrize("case", BAD_FILE_FAMILIES, ids=lambda case: case.replace(" ", "-"))
def test_a_bad_file_is_quarantined_with_a_report_and_never_dispatched(
    pipeline: Pipeline, unique: str, case: str
) -> None:
    rule, make_body, limits = datasets.BAD_FILES[case]
    model = f"bad-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model, **limits))
    key, body = datasets.bad_file_key(model, case), make_body()

    put = pipeline.upload(key, body)

    report = pipeline.quarantine_report(key)
    assert report["rule"] == rule, report
    assert report["source"]["version_id"] == put["VersionId"]
    assert report["violations"][0]["detail"]
    # The copy sits next to its report; the raw object is untouched; nothing was accepted or queued.
    quarantined = pipeline.s3.head_object(Bucket=pipeline.outputs["QuarantineBucketName"], Key=key)
    assert quarantined["ContentLength"] == len(body)
    assert (
        pipeline.s3.head_object(Bucket=pipeline.outputs["RawBucketName"], Key=key)["VersionId"]
        == put["VersionId"]
    )
    assert pipeline.accepted(model) is None
    assert eventually(pipeline.ingest_idle, 60, what="the ingest queue to drain")
    assert pipeline.jobs.of(model) == []
    # Quarantining did not feed the file back into ingest: one report, written once.
    versions = pipeline.s3.list_object_versions(
        Bucket=pipeline.outputs["QuarantineBucketName"], Prefix=f"{key}.report"
    )
    assert len(versions.get("Versions", [])) == 1


def test_a_report_names_columns_and_counts_rows(pipeline: Pipeline, unique: str) -> None:
    model = f"rows-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))

    def three_out_of_range(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[[1, 2, 3], "sepal_width"] = -1.0
        return frame

    pipeline.upload(f"{model}/negative.csv", datasets.iris_csv(three_out_of_range))

    violation = pipeline.quarantine_report(f"{model}/negative.csv")["violations"][0]
    assert violation["rule"] == "out_of_range"
    assert violation["columns"] == ["sepal_width"]
    assert violation["rows"] == 3

    # AND a DatasetQuarantined event went out on the pipeline's event bus
    def quarantined_event() -> dict[str, object] | None:
        messages = pipeline.sqs.receive_message(
            QueueUrl=pipeline.outputs["PipelineEventsQueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            event = json.loads(message["Body"])
            if event["detail-type"] == "DatasetQuarantined" and event["detail"]["model"] == model:
                return event  # type: ignore[no-any-return]
        return None

    event = eventually(quarantined_event, 30, interval=0, what="a DatasetQuarantined event")
    assert event["source"] == "arrival"
    assert event["detail"]["rule"] == "out_of_range"  # type: ignore[index]


def test_a_file_for_a_model_without_contract_is_quarantined(pipeline: Pipeline, unique: str) -> None:
    key = f"nobody-{unique}/data.csv"
    pipeline.upload(key, datasets.iris_csv(lambda f: f))
    report = pipeline.quarantine_report(key)
    assert report["rule"] == "no_contract"
    assert f"nobody-{unique}" in report["violations"][0]["detail"]


def test_folders_and_unsupported_suffixes_are_ignored(pipeline: Pipeline, unique: str) -> None:
    model = f"ignore-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    pipeline.upload(f"{model}/folder/", b"")
    pipeline.upload(f"{model}/notes.txt", b"hello")
    # A sentinel after them: once its outcome is in and the queue is idle, their events were handled
    # (idle right after the uploads proves nothing: S3's notifications may not have arrived yet).
    pipeline.upload(f"{model}/sentinel.csv", datasets.iris_csv(lambda f: f))
    accepted = pipeline.wait_accepted(model, 1)
    assert eventually(pipeline.ingest_idle, 60, what="the ingest queue to drain")
    quarantined = pipeline.s3.list_objects_v2(Bucket=pipeline.outputs["QuarantineBucketName"], Prefix=model)
    assert quarantined.get("KeyCount", 0) == 0
    assert [entry["source"]["key"] for entry in accepted["datasets"]] == [f"{model}/sentinel.csv"]


def test_the_same_event_twice_and_the_same_bytes_twice_count_once(pipeline: Pipeline, unique: str) -> None:
    model = f"dup-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    body = datasets.iris_csv(lambda f: f)
    put = pipeline.upload(f"{model}/first.csv", body)
    pipeline.wait_accepted(model, 1)
    eventually(lambda: pipeline.jobs.of(model), 30, what="the first training job")

    # WHEN S3 delivers the same event again, and the same bytes arrive under another name
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": pipeline.outputs["RawBucketName"]},
                    "object": {"key": f"{model}/first.csv", "versionId": put["VersionId"], "size": len(body)},
                },
            }
        ]
    }
    pipeline.sqs.send_message(QueueUrl=pipeline.outputs["IngestQueueUrl"], MessageBody=json.dumps(event))
    pipeline.upload(f"{model}/copy of first.csv", body)
    # A sentinel that changes neither the list nor the jobs: once it is quarantined and the queue is
    # idle, the two before it were handled (idle alone could come before S3's notification).
    pipeline.upload(f"{model}/sentinel.csv", datasets.to_csv(datasets.iris_frame(3, seed=4)))
    pipeline.quarantine_report(f"{model}/sentinel.csv")
    assert eventually(pipeline.ingest_idle, 60, what="the ingest queue to drain")

    # THEN the accepted list changed once, and one job was queued
    accepted = pipeline.accepted(model)
    assert accepted is not None
    assert [entry["source"]["key"] for entry in accepted["datasets"]] == [f"{model}/first.csv"]
    assert len(pipeline.jobs.of(model)) == 1


def test_a_contract_uploaded_with_the_cli_adds_a_model_without_redeploying(
    pipeline: Pipeline, local_cloud: LocalCloud, unique: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    model = f"new-{unique}"
    contract = tmp_path / f"{model}.yaml"
    contract.write_bytes(datasets.contract_yaml("house-prices", model))

    result = CliRunner().invoke(app, ["contract", "put", str(contract), "--stack-name", INGEST_STACK])
    assert result.exit_code == 0, result.output

    pipeline.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(120)))
    assert pipeline.wait_accepted(model, 1)["datasets"][0]["rows"] == 120


@pytest.fixture(scope="module")
def burst_pipeline(local_cloud: LocalCloud) -> Iterator[Pipeline]:
    """A stack of its own, so no other test's trainer instance is already running."""
    outputs = local_cloud.deploy(PROJECT_ROOT / "template.yaml", "arrival-burst", TEST_STACK_PARAMETERS)
    yield from _pipeline(local_cloud, "arrival-burst", outputs)


def test_ten_concurrent_uploads_start_exactly_one_trainer(burst_pipeline: Pipeline, unique: str) -> None:
    model = f"burst-{unique}"
    burst_pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    assert burst_pipeline.trainer_instances() == []
    bodies = [datasets.to_csv(datasets.iris_frame(60, seed=seed)) for seed in range(10)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(
            pool.map(
                lambda item: burst_pipeline.upload(f"{model}/part-{item[0]}.csv", item[1]), enumerate(bodies)
            )
        )

    burst_pipeline.wait_accepted(model, 10)
    assert eventually(burst_pipeline.ingest_idle, 90, what="the ingest queue to drain")
    instances = burst_pipeline.trainer_instances()
    assert len(instances) == 1
    # AND it is a trainer, tagged, with the worker's user data
    user_data = burst_pipeline.ec2.describe_instance_attribute(
        InstanceId=instances[0]["InstanceId"], Attribute="userData"
    )
    assert "arrival-worker --role trainer" in base64.b64decode(user_data["UserData"]["Value"]).decode()
