"""The pre-training drift report end to end: each dataset a training adds is compared with the data the
champion was trained on, by the trainer, and the report reaches the run, the version, S3, the event
bus and `arrival drift`."""

from __future__ import annotations

import json

import pytest

from common.drift import DriftReport
from tests import datasets
from tests.conftest import LocalCloud
from tests.e2e.conftest import Chain, arrival
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

SHIFTED = ["sepal_length", "sepal_width"]


def _shifted_iris(rows: int, seed: int) -> bytes:
    """A fresh sample with two features moved by five standard deviations (still within the
    contract's bounds: sepal_length <= 15, sepal_width <= 10)."""
    frame = datasets.iris_frame(rows, seed)
    for name in SHIFTED:
        frame[name] = (frame[name] + 5 * frame[name].std()).round(2)
    return datasets.to_csv(frame)


def _object(chain: Chain, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body: bytes = chain.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


@pytest.fixture(scope="module")
def chain(second_chain: Chain) -> Chain:
    """On the second training stack, in its lane (tests/conftest.py): no API needed."""
    return second_chain


def test_a_shifted_dataset_is_flagged_and_an_unshifted_one_is_not(
    chain: Chain, local_cloud: LocalCloud, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a champion trained on a first dataset, whose version has no report to make
    model = f"drift-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/day-1.csv", datasets.to_csv(datasets.iris_frame(1500, seed=11)))
    first = chain.wait_versions(model, 1)[0]
    assert first.tags["drift.status"] == "no champion: nothing to compare the data with"

    # WHEN a fresh sample of the same distribution arrives
    chain.upload(f"{model}/day-2.csv", datasets.to_csv(datasets.iris_frame(1500, seed=12)))
    unshifted = chain.wait_versions(model, 2)[-1]

    # THEN its version's report flags no column; the champion's data (whichever version it is now)
    # is still of the first distribution
    assert unshifted.tags["drift.status"] == "no drift", unshifted.tags
    assert json.loads(unshifted.tags["drift.drifted_columns"]) == []
    assert unshifted.tags["drift.columns_checked"] == "5"  # four features and the target

    # WHEN a dataset with two shifted columns arrives
    chain.upload(f"{model}/day-3.csv", _shifted_iris(1500, seed=13))
    shifted = chain.wait_versions(model, 3)[-1]

    # THEN exactly the shifted columns are flagged: in the version's tags, the run's, the report
    assert json.loads(shifted.tags["drift.drifted_columns"]) == SHIFTED, shifted.tags
    run = chain.mlflow.get_run(shifted.run_id)
    assert run.data.tags["drift.status"] == "drifted"
    assert json.loads(run.data.tags["drift.drifted_columns"]) == SHIFTED
    report = DriftReport.from_json(_object(chain, shifted.tags["drift.summary"]))
    assert report.drifted_columns == SHIFTED
    # Compared: what the champion was not trained on (day-2 too, if its version was not promoted).
    compared = [uri.split("?")[0].rsplit("/", 1)[-1] for uri in report.context["current"].split(", ")]
    assert compared in (["day-3.csv"], ["day-2.csv", "day-3.csv"]), compared
    page = _object(chain, shifted.tags["drift.report"]).decode()
    assert "Drift in 2 of 5 columns: sepal_length, sepal_width" in page
    # AND the run holds both files as artifacts
    logged = {artifact.path for artifact in chain.mlflow.list_artifacts(shifted.run_id, "drift")}
    assert logged == {"drift/report.html", "drift/report.json"}
    # AND DriftDetected went out for the training data, naming the columns and the report
    detected = eventually(lambda: chain.events.of(("DriftDetected", model)), 30, what="DriftDetected")
    assert len(detected) == 1  # the unshifted dataset published none
    detail = detected[0]["body"]["detail"]
    assert detail["kind"] == "training_data"
    assert detail["drifted_columns"] == SHIFTED
    assert detail["version"] == shifted.tags["drift.champion_version"]
    assert (detail["report"], detail["summary"]) == (
        shifted.tags["drift.report"],
        shifted.tags["drift.summary"],
    )

    # AND `arrival drift` prints each version's summary and where its report is
    result = arrival(local_cloud, monkeypatch, "drift", "--model", model, "--stack-name", chain.stack)
    assert result.exit_code == 0, result.output
    assert f"version {shifted.version}: drift in sepal_length, sepal_width (2 of 5)" in result.output
    assert f"version {unshifted.version}: no drift in the 5 columns checked" in result.output
    assert shifted.tags["drift.report"] in result.output
    assert f"run_uuid={shifted.run_id}" in result.output
    assert "live traffic" in result.output

    # AND `arrival status` shows each version's data drift beside the gate's decision
    shown = arrival(local_cloud, monkeypatch, "status", "--json", "--stack-name", chain.stack)
    assert shown.exit_code == 0, shown.output
    (status,) = [entry for entry in json.loads(shown.output)["stack"]["models"] if entry["name"] == model]
    by_version = {entry["version"]: entry for entry in status["versions"]}
    assert (by_version[shifted.version]["drift"], by_version[shifted.version]["drifted_columns"]) == (
        "drifted",
        SHIFTED,
    )
    assert (by_version[unshifted.version]["drift"], by_version[unshifted.version]["drifted_columns"]) == (
        "no drift",
        [],
    )
