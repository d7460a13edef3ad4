"""Batch predictions end to end through LocalStack: a champion trained by the chain, files dropped under
the inference bucket's `<model>/input/`, and what the batch function leaves under `<model>/output/`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests import datasets
from tests.conftest import TRAINING_STACK
from tests.e2e.conftest import Chain
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

FEATURES = ["petal_length", "petal_width", "sepal_length", "sepal_width"]


def _object(chain: Chain, key: str) -> bytes | None:
    try:
        body: bytes = chain.s3.get_object(Bucket=chain.outputs["InferenceBucketName"], Key=key)["Body"].read()
    except chain.s3.exceptions.NoSuchKey:
        return None
    return body


def _wait_json(chain: Chain, key: str, timeout: float = 120) -> dict[str, Any]:
    body = eventually(lambda: _object(chain, key), timeout, interval=0.5, what=key)
    document: dict[str, Any] = json.loads(body)
    return document


def _parquet(chain: Chain, key: str) -> pd.DataFrame:
    body = _object(chain, key)
    assert body is not None, key
    return pd.read_parquet(io.BytesIO(body))


def _drop(chain: Chain, key: str, body: bytes) -> str:
    response = chain.s3.put_object(Bucket=chain.outputs["InferenceBucketName"], Key=key, Body=body)
    version: str = response["VersionId"]
    return version


def test_a_batch_file_is_scored_by_the_champion_bad_rows_set_aside(
    chain: Chain, unique: str, tmp_path: Path
) -> None:
    # GIVEN a model whose first dataset made a champion, its serving pointer in place
    model = f"batch-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/train.csv", datasets.noisy_iris_csv(300, seed=4, noise=0.3))
    version = chain.wait_versions(model, 1)[0]
    assert "promotion" in version.tags, version.tags

    # WHEN a file of 120 rows without labels lands under input/
    good = datasets.iris_frame(120, seed=11)[FEATURES]
    version_id = _drop(chain, f"{model}/input/may.csv", datasets.to_csv(good))

    # THEN its predictions, by the champion, appear beside a manifest with the rows and the version
    manifest = _wait_json(chain, f"{model}/output/may.manifest.json")
    assert manifest["version"] == version.version
    assert manifest["rows"] == {"read": 120, "scored": 120, "rejected": 0}
    assert manifest["source"]["version_id"] == version_id
    assert manifest["timings"]["total_seconds"] > 0
    predictions = _parquet(chain, f"{model}/output/may.predictions.parquet")
    assert len(predictions) == 120
    assert set(predictions["prediction"]) <= set(datasets.SPECIES)
    assert set(predictions["model_version"]) == {version.version}
    assert {f"probability_{name}" for name in datasets.SPECIES} <= set(predictions.columns)
    assert predictions[FEATURES].to_numpy().tolist() == good.to_numpy().tolist()
    assert _object(chain, f"{model}/output/may.rejects.parquet") is None
    # AND BatchCompleted is on the bus
    completed = eventually(lambda: chain.events.of(("BatchCompleted", model)), 30, what="BatchCompleted")
    detail = completed[0]["body"]["detail"]
    assert (detail["rows_scored"], detail["rows_rejected"], detail["version"]) == (120, 0, version.version)
    assert detail["input"].endswith(f"{model}/input/may.csv?versionId={version_id}")

    # WHEN a file with three rows breaking the contract lands
    mixed = datasets.iris_frame(40, seed=12)[FEATURES].astype(object)
    mixed.loc[5, "petal_width"] = -1.0
    mixed.loc[20, "sepal_length"] = "tall"
    mixed.loc[33, "petal_length"] = None
    _drop(chain, f"{model}/input/june.csv", datasets.to_csv(mixed))

    # THEN the other 37 are scored, and the three are in a rejects file, each with its rule
    manifest = _wait_json(chain, f"{model}/output/june.manifest.json")
    assert manifest["rows"] == {"read": 40, "scored": 37, "rejected": 3}
    assert len(_parquet(chain, f"{model}/output/june.predictions.parquet")) == 37
    rejects = _parquet(chain, f"{model}/output/june.rejects.parquet")
    assert dict(zip(rejects["row"], rejects["rule"], strict=True)) == {
        6: "out_of_range",
        21: "wrong_type",
        34: "null_values",
    }
    assert rejects.set_index("row").loc[21, "columns"] == "sepal_length"

    # WHEN the operator scores a file with the CLI and waits
    mine = tmp_path / "july.csv"
    mine.write_bytes(datasets.to_csv(datasets.iris_frame(25, seed=13)[FEATURES]))
    saved = tmp_path / "july-predictions.csv"
    result = CliRunner().invoke(
        app,
        [
            *("batch", str(mine), "--model", model, "--wait", "--timeout", "300"),
            *("--output", str(saved), "--stack-name", TRAINING_STACK),
        ],
    )

    # THEN it says where the file went and what was scored, by which version
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert f"uploaded s3://{chain.outputs['InferenceBucketName']}/{model}/input/july.csv" in printed
    assert f"scored 25 rows with version {version.version} (0 rejected)" in printed
    assert f"{model}/output/july.predictions.parquet" in printed
    # and the predictions are in the local file asked for: no AWS CLI needed to read them
    assert f"wrote 25 predictions to {saved}" in printed
    local = pd.read_csv(saved)
    expected = _parquet(chain, f"{model}/output/july.predictions.parquet")
    assert local["prediction"].tolist() == expected["prediction"].tolist()


def test_a_file_for_a_model_without_a_champion_fails_clearly(chain: Chain, unique: str) -> None:
    # GIVEN a model with a contract but no champion yet
    model = f"nochamp-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN a file lands under its input/
    key = f"{model}/input/may.csv"
    _drop(chain, key, datasets.to_csv(datasets.iris_frame(10)[FEATURES]))

    # THEN BatchFailed names the reason, a report sits in output/, and the notification is in the
    # dead-letter queue with the reason, to replay once a champion exists
    failed = eventually(lambda: chain.events.of(("BatchFailed", model)), 120, what="BatchFailed")
    reason = failed[0]["body"]["detail"]["reason"]
    assert reason.startswith("no_champion") and model in reason
    report = _wait_json(chain, f"{model}/output/may.failure.json", timeout=30)
    assert report["rule"] == "no_champion"
    sqs = chain.cloud.client("sqs")

    def dead_lettered() -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = sqs.receive_message(
            QueueUrl=chain.outputs["BatchDeadLetterQueueUrl"],
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=0,
        ).get("Messages", [])
        return [message for message in messages if key in message["Body"]]

    (message,) = eventually(dead_lettered, 30, what="the notification in the dead-letter queue")
    assert message["MessageAttributes"]["failure_reason"]["StringValue"] == reason
    assert _object(chain, f"{model}/output/may.predictions.parquet") is None
