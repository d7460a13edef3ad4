from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import yaml
from moto import mock_aws
from pydantic import ValidationError

from cli import drift as cli_drift
from cli.operations import OperationError
from common.adapters import events, s3, tracking
from common.adapters.stack import StackResources
from common.contracts import DataContract, DriftMethod, Monitoring, parse_contract
from common.drift import DEFAULT_THRESHOLDS, DriftReport, compare
from worker import drift_report

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def house_prices(**monitoring: Any) -> DataContract:
    document = yaml.safe_load((CONTRACTS / "house-prices.yaml").read_text())
    if monitoring:
        document["monitoring"] = monitoring
    return DataContract.model_validate(document)


def houses(rows: int, seed: int, shifted: tuple[str, ...] = (), with_price: bool = True) -> pd.DataFrame:
    """A fixed-seed sample of one distribution; `shifted` columns moved by five standard deviations."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "area_m2": rng.normal(90, 20, rows),
            "rooms": rng.integers(1, 7, rows).astype(float),
            "year_built": rng.normal(1975, 15, rows),
            "district": rng.choice(["north", "south", "east", "west", "centre"], rows),
            "heating": rng.choice(["gas", "electric", "heat_pump"], rows),
            "price": rng.normal(300_000, 50_000, rows),
        }
    )
    for name in shifted:
        frame[name] = frame[name] + 5 * frame[name].std()
    return frame if with_price else frame.drop(columns="price")


# --- the contract's monitoring section


def test_a_contract_without_monitoring_gets_defaults() -> None:
    contract = parse_contract((CONTRACTS / "iris.yaml").read_text())
    assert contract.monitoring == Monitoring()
    assert contract.monitoring.sample_rate == 0.1
    assert contract.monitoring.setting_for("sepal_length") == (None, None)


def test_the_example_contracts_monitoring_section_sets_its_columns_method() -> None:
    contract = parse_contract((CONTRACTS / "house-prices.yaml").read_text())
    assert contract.monitoring.setting_for("price") == (DriftMethod.wasserstein, 0.2)
    assert contract.monitoring.setting_for("rooms") == (None, None)
    report = compare(houses(300, seed=1), houses(300, seed=2), contract)
    assert (report.columns["price"].method, report.columns["price"].threshold) == ("wasserstein", 0.2)


@pytest.mark.parametrize(
    ("monitoring", "message"),
    [
        ({"columns": {"colour": {"method": "ks"}}}, "monitoring.columns: unknown column 'colour'"),
        ({"columns": {"district": {"method": "ks"}}}, "monitoring.columns.district: ks compares numbers"),
        ({"columns": {"rooms": {"method": "chi2"}}}, "monitoring.columns.rooms: chi2 compares categories"),
        ({"method": "wasserstein"}, r"monitoring.method \(column 'district'\): wasserstein compares numbers"),
        ({"columns": {"rooms": {"threshold": 0.3}}}, "monitoring.columns.rooms: a threshold needs a method"),
        ({"method": "psi", "threshold": -1}, "threshold"),
        ({"method": "jensenshannon", "threshold": 2}, r"monitoring.threshold: a jensenshannon threshold"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"columns": {"rooms": {"method": "median"}}}, "monitoring.columns.rooms.method"),
        ({"schedule": "daily"}, "monitoring.schedule"),
    ],
)
def test_a_bad_monitoring_section_is_refused_naming_the_field(
    monitoring: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        house_prices(**monitoring)


def test_a_columns_own_method_does_not_take_the_sections_threshold() -> None:
    monitoring = house_prices(
        method="psi", threshold=0.3, columns={"rooms": {"method": "ks"}, "area_m2": {"threshold": 0.5}}
    ).monitoring
    assert monitoring.setting_for("rooms") == (DriftMethod.ks, None)
    assert monitoring.setting_for("area_m2") == (DriftMethod.psi, 0.5)
    assert monitoring.setting_for("district") == (DriftMethod.psi, 0.3)


# --- compare


def test_a_fresh_sample_of_the_same_distribution_drifts_nowhere() -> None:
    report = compare(houses(3000, seed=1), houses(3000, seed=2), house_prices())
    assert report.drifted_columns == []
    assert not report.drifted
    assert set(report.columns) == {"area_m2", "rooms", "year_built", "district", "heating", "price"}


@pytest.mark.parametrize("rows", [300, 3000], ids=["tested", "measured"])
def test_shifted_columns_and_only_they_drift(rows: int) -> None:
    report = compare(
        houses(rows, seed=1), houses(rows, seed=2, shifted=("area_m2", "year_built")), house_prices()
    )
    assert report.drifted_columns == ["area_m2", "year_built"]
    assert report.drifted


def test_small_references_are_tested_and_large_ones_measured() -> None:
    small = compare(houses(500, seed=1), houses(500, seed=2), house_prices())
    large = compare(houses(2000, seed=1), houses(2000, seed=2), house_prices())
    assert (small.columns["area_m2"].method, small.columns["district"].method) == ("ks", "chi2")
    assert small.columns["area_m2"].p_value is not None
    # Six columns share the test's 0.05 (Bonferroni); a distance's threshold is its own.
    assert small.columns["area_m2"].threshold == pytest.approx(DEFAULT_THRESHOLDS[DriftMethod.ks] / 6)
    assert large.columns["area_m2"].threshold == DEFAULT_THRESHOLDS[DriftMethod.wasserstein]
    assert (large.columns["area_m2"].method, large.columns["district"].method) == (
        "wasserstein",
        "jensenshannon",
    )
    assert large.columns["area_m2"].score is not None
    assert large.columns["area_m2"].p_value is None


def test_a_category_whose_share_moves_drifts() -> None:
    reference, current = houses(3000, seed=1), houses(3000, seed=2)
    current["heating"] = np.where(np.arange(3000) % 10 < 8, "heat_pump", current["heating"])
    report = compare(reference, current, house_prices())
    assert report.drifted_columns == ["heating"]
    assert report.columns["heating"].kind == "categorical"


def test_the_target_is_compared_where_both_sides_have_it() -> None:
    labelled = compare(houses(3000, seed=1), houses(3000, seed=2, shifted=("price",)), house_prices())
    unlabelled = compare(houses(3000, seed=1), houses(3000, seed=2, with_price=False), house_prices())
    assert labelled.drifted_columns == ["price"]
    assert labelled.columns["price"].role == "target"
    assert "price" not in unlabelled.columns
    assert "price" not in unlabelled.skipped  # unlabelled traffic has no target: nothing to report


def test_a_column_that_cannot_be_compared_is_named_with_why() -> None:
    current = houses(300, seed=2).drop(columns="rooms")
    current["area_m2"] = np.nan
    report = compare(houses(300, seed=1), current, house_prices())
    assert report.skipped == {
        "rooms": "absent from the current data",
        "area_m2": "no values in the current data",
    }
    assert "rooms" not in report.columns


def test_the_contracts_method_and_thresholds_decide() -> None:
    reference, current = houses(3000, seed=1), houses(3000, seed=2)
    current["area_m2"] = current["area_m2"] + 0.5 * current["area_m2"].std()
    default = compare(reference, current, house_prices())
    strict = house_prices(columns={"area_m2": {"method": "psi", "threshold": 0.05}})
    lenient = house_prices(columns={"area_m2": {"method": "psi", "threshold": 5}})
    assert "area_m2" in default.drifted_columns
    assert compare(reference, current, strict).columns["area_m2"].method == "psi"
    assert "area_m2" in compare(reference, current, strict).drifted_columns
    assert compare(reference, current, lenient).drifted_columns == []
    # An explicit `monitoring` replaces the contract's own.
    override = compare(reference, current, strict, Monitoring())
    assert override.columns["area_m2"].method == "wasserstein"


@pytest.mark.parametrize("method", ["ks", "psi", "jensenshannon", "wasserstein"])
def test_every_numeric_method_tells_a_shift_from_noise(method: str) -> None:
    contract = house_prices(columns={"area_m2": {"method": method}})
    same = compare(houses(2000, seed=1), houses(2000, seed=2), contract)
    moved = compare(houses(2000, seed=1), houses(2000, seed=2, shifted=("area_m2",)), contract)
    assert not same.columns["area_m2"].drifted
    assert moved.columns["area_m2"].drifted


@pytest.mark.parametrize("method", ["chi2", "psi", "jensenshannon"])
def test_every_categorical_method_tells_a_shift_from_noise(method: str) -> None:
    contract = house_prices(columns={"district": {"method": method}})
    current = houses(2000, seed=2)
    moved = current.assign(district=np.where(np.arange(2000) % 4 == 0, current["district"], "centre"))
    assert not compare(houses(2000, seed=1), current, contract).columns["district"].drifted
    assert compare(houses(2000, seed=1), moved, contract).columns["district"].drifted


def test_a_constant_column_on_both_sides_does_not_drift() -> None:
    reference, current = houses(300, seed=1), houses(300, seed=2)
    reference["heating"] = current["heating"] = "gas"
    reference["rooms"] = current["rooms"] = 3.0
    report = compare(reference, current, house_prices())
    assert not report.columns["heating"].drifted
    assert not report.columns["rooms"].drifted


def test_large_frames_are_sampled_reproducibly() -> None:
    reference, current = houses(5000, seed=1), houses(5000, seed=2)
    first = compare(reference, current, house_prices(), max_rows=1000)
    assert first.columns["area_m2"].reference_size == 1000
    assert (first.reference_rows, first.current_rows, first.sampled_to) == (5000, 5000, 1000)
    assert first == compare(reference, current, house_prices(), max_rows=1000)


def test_missing_values_are_left_out_of_the_sizes() -> None:
    current = houses(300, seed=2)
    current.loc[:99, "year_built"] = np.nan
    assert compare(houses(300, seed=1), current, house_prices()).columns["year_built"].current_size == 200


# --- the report


def test_the_json_report_round_trips_and_says_what_drifted() -> None:
    report = compare(houses(300, seed=1), houses(300, seed=2, shifted=("rooms",)), house_prices())
    report = report.with_context(model="house-prices", version="3")
    text = report.to_json()
    assert DriftReport.from_json(text) == report
    assert '"drifted_columns": [\n    "rooms"\n  ]' in text
    summary = report.summary()
    assert summary["drifted_columns"] == ["rooms"]
    assert summary["columns_checked"] == 6
    assert "histogram" not in summary["columns"]["rooms"]


def test_the_html_report_is_self_contained_and_names_each_column() -> None:
    report = compare(houses(300, seed=1), houses(300, seed=2, shifted=("rooms",)), house_prices())
    page = report.with_context(model="<house>").to_html(title="Drift of house-prices")
    assert page.startswith("<!DOCTYPE html>")
    assert "Drift in 1 of 6 columns: rooms" in page
    assert "&lt;house&gt;" in page  # escaped, never markup
    assert page.count("<svg") == 6
    assert not re.search(r"<script|<link|<img|\bsrc=|\bhref=|url\(", page)


def test_categories_beyond_the_histograms_width_are_gathered() -> None:
    contract = DataContract.model_validate(
        {
            "model": "many",
            "task": "regression",
            "target": "y",
            "columns": {
                "code": {"type": "categorical", "categories": [f"c{i}" for i in range(40)]},
                "y": {"type": "numeric"},
            },
        }
    )
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"code": rng.choice([f"c{i}" for i in range(40)], 2000), "y": rng.normal(size=2000)})
    histogram = compare(frame, frame, contract).columns["code"].histogram
    assert len(histogram.labels) == 20
    assert histogram.labels[-1] == "(other)"
    assert sum(histogram.reference) == pytest.approx(1.0)


# --- the worker's pre-training report (worker/drift_report.py), against moto


@pytest.fixture
def stack(aws_credentials: None, tmp_path: Path) -> Iterator[StackResources]:
    s3.s3_client.cache_clear()
    with mock_aws():
        for bucket in ("unit-processed", "unit-models"):
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield StackResources("unit-processed", "unit-config", "unit-bus", "s3://unit-dvc", "unit-models")
    s3.s3_client.cache_clear()


def _dataset(frame: pd.DataFrame, name: str, scratch: Path) -> dict[str, Any]:
    """Processed like the ingest function's: Parquet in the processed bucket, an accepted-list entry."""
    local = scratch / f"{name}.parquet"
    frame.to_parquet(local, index=False)
    key = f"house-prices/data/{name}.parquet"
    s3.upload(local, "unit-processed", key)
    source = {"bucket": "unit-raw", "key": f"house-prices/{name}.csv", "version_id": "v1"}
    return {"content_hash": name, "processed_key": key, "rows": len(frame), "source": source}


def _champion_trained_on(
    monkeypatch: pytest.MonkeyPatch, scratch: Path, datasets: list[dict[str, Any]] | None
) -> None:
    def download(run_id: str, path: str, destination: Path) -> Path:
        assert (run_id, path) == ("champion-run", "workspace/data/accepted.json")
        destination.mkdir(parents=True, exist_ok=True)
        listed = destination / "accepted.json"
        listed.write_text(
            json.dumps({"bucket": "unit-processed", "model": "house-prices", "datasets": datasets})
        )
        return listed

    champion = None if datasets is None else tracking.ModelVersion("house-prices", "1", "champion-run", {})
    monkeypatch.setattr(tracking, "champion", lambda name: champion)
    monkeypatch.setattr(tracking, "download_run_artifacts", download)


def test_a_new_dataset_is_compared_with_the_champions_training_data(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN a champion trained on one dataset, and a list that adds a shifted one
    trained = _dataset(houses(2000, seed=1), "first", tmp_path)
    arriving = _dataset(houses(1500, seed=2, shifted=("rooms",)), "second", tmp_path)
    _champion_trained_on(monkeypatch, tmp_path, [trained])
    accepted = {"model": "house-prices", "datasets": [trained, arriving]}
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "publish", lambda bus, kind, detail: published.append((kind, detail)))

    # WHEN the training makes its report
    outcome = drift_report.training_report(house_prices(), accepted, stack, "run-2", tmp_path)
    drift_report.publish(stack, outcome)

    # THEN it flags the shifted column, in tags, artifacts, S3 and the event
    prefix = "s3://unit-models/house-prices/drift/training/run-2/"
    assert outcome.run_tags["drift.status"] == "drifted"
    assert json.loads(outcome.version_tags["drift.drifted_columns"]) == ["rooms"]
    assert outcome.version_tags["drift.columns_checked"] == "6"
    assert outcome.version_tags["drift.report"] == f"{prefix}report.html"
    assert [(folder, path.name) for folder, path in outcome.artifacts] == [
        ("drift", "report.html"),
        ("drift", "report.json"),
    ]
    stored = s3.get_bytes("unit-models", "house-prices/drift/training/run-2/report.json")
    assert stored is not None
    report = DriftReport.from_json(stored[0])
    assert (report.reference_rows, report.current_rows) == (2000, 1500)
    assert report.context["current"] == "s3://unit-raw/house-prices/second.csv?versionId=v1"
    assert published == [
        (
            "DriftDetected",
            {
                "name": "house-prices",
                "version": "1",
                "kind": "training_data",
                "drifted_columns": ["rooms"],
                "report": f"{prefix}report.html",
                "summary": f"{prefix}report.json",
            },
        )
    ]


def test_an_unshifted_dataset_publishes_nothing(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trained = _dataset(houses(2000, seed=1), "first", tmp_path)
    arriving = _dataset(houses(2000, seed=2), "second", tmp_path)
    _champion_trained_on(monkeypatch, tmp_path, [trained])
    outcome = drift_report.training_report(
        house_prices(), {"datasets": [trained, arriving]}, stack, "run-2", tmp_path
    )
    assert outcome.run_tags["drift.status"] == "no drift"
    assert outcome.run_tags["drift.drifted_columns"] == "[]"
    assert outcome.event is None


def test_without_a_champion_or_new_data_there_is_no_report_and_the_tag_says_why(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trained = _dataset(houses(100, seed=1), "first", tmp_path)
    _champion_trained_on(monkeypatch, tmp_path, None)
    first = drift_report.training_report(house_prices(), {"datasets": [trained]}, stack, "run-1", tmp_path)
    _champion_trained_on(monkeypatch, tmp_path, [trained])
    same = drift_report.training_report(house_prices(), {"datasets": [trained]}, stack, "run-2", tmp_path)
    assert first.run_tags == {"drift.status": "no champion: nothing to compare the data with"}
    assert same.version_tags == {"drift.status": "no dataset arrived since champion version 1's training"}
    assert first.artifacts == same.artifacts == []


def test_a_report_that_fails_is_tagged_and_never_fails_the_training(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trained = _dataset(houses(100, seed=1), "first", tmp_path)
    gone = {**trained, "content_hash": "gone", "processed_key": "house-prices/data/gone.parquet"}
    _champion_trained_on(monkeypatch, tmp_path, [trained])
    outcome = drift_report.training_report(
        house_prices(), {"datasets": [trained, gone]}, stack, "r", tmp_path
    )
    assert outcome.run_tags["drift.status"] == "error"
    assert outcome.run_tags["drift.error"].startswith(
        "LookupError: cannot read s3://unit-processed/house-prices/data/gone.parquet: An error occurred (404)"
    )
    assert outcome.version_tags == {"drift.status": "error"}
    assert outcome.event is None


def test_large_datasets_are_sampled_in_proportion_as_they_are_read(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("common.drift.MAX_ROWS", 1000)
    big, small = (
        _dataset(houses(3000, seed=1), "big", tmp_path),
        _dataset(houses(1000, seed=2), "small", tmp_path),
    )
    frame = drift_report._read("unit-processed", [big, small], tmp_path)
    assert len(frame) == 1000  # 750 of the big one, 250 of the small one


# --- `arrival drift` (cli/drift.py)


def _versions(monkeypatch: pytest.MonkeyPatch, versions: list[tracking.ModelVersion]) -> None:
    monkeypatch.setattr(cli_drift, "outputs_of", lambda stack: {"ModelsBucketName": "unit-models"})
    monkeypatch.setattr(tracking, "versions_of", lambda name: versions)
    monkeypatch.setattr(tracking, "champion", lambda name: versions[0] if versions else None)
    monkeypatch.setattr(
        tracking, "artifact_url", lambda run, path: f"http://mlflow/get?run={run}&path={path}"
    )


def test_the_drift_command_shows_each_versions_report_newest_first(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = "s3://unit-models/m/drift/training/r2/report.html"
    _versions(
        monkeypatch,
        [
            tracking.ModelVersion(
                "m", "1", "r1", {"drift.status": "no champion: nothing to compare the data with"}
            ),
            tracking.ModelVersion(
                "m",
                "2",
                "r2",
                {
                    "drift.status": "drifted",
                    "drift.drifted_columns": '["rooms", "area_m2"]',
                    "drift.columns_checked": "6",
                    "drift.champion_version": "1",
                    "drift.report": report,
                },
            ),
            tracking.ModelVersion("m", "3", "r3", {}),
        ],
    )
    view = cli_drift.overview("m", "arrival", limit=2)
    lines = cli_drift.render(view)
    assert [version.version for version in view.versions] == ["3", "2"]
    assert lines[0] == "m: champion version 1"
    assert "  version 3: no report (trained before drift reports, or not finished)" in lines
    assert "  version 2: drift in rooms, area_m2 (2 of 6) against version 1" in lines
    assert f"    report: {report}" in lines
    assert "    in MLflow: http://mlflow/get?run=r2&path=drift/report.html" in lines
    assert "  none yet (s3://unit-models/m/drift/latest.json does not exist)" in lines
    assert json.loads(json.dumps(view.as_dict()))["versions"][1]["drifted_columns"] == ["rooms", "area_m2"]


def test_the_drift_command_shows_the_latest_live_traffic_report(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _versions(monkeypatch, [])
    report = compare(houses(300, seed=1), houses(300, seed=2, shifted=("rooms",)), house_prices())
    # As common/monitoring.py stores it: the report's summary, where the report is, and when.
    live = {**report.summary(), "version": "4", "report": "s3://unit-models/m/drift/x/report.html"}
    s3.put_json("unit-models", "m/drift/latest.json", live)
    lines = cli_drift.render(cli_drift.overview("m", "arrival"))
    assert "  drift in rooms (1 of 6 checked)" in lines
    assert "  version: 4" in lines
    assert "  current_rows: 300" in lines
    assert "  report: s3://unit-models/m/drift/x/report.html" in lines
    assert "  no versions yet" in lines


def test_the_drift_command_names_a_model_it_knows_nothing_of(
    stack: StackResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _versions(monkeypatch, [])
    with pytest.raises(OperationError, match="model 'nobody' has no versions and no drift report yet"):
        cli_drift.overview("nobody", "arrival")


def test_a_long_list_of_drifted_columns_is_cut_to_fit_a_tag_and_says_so() -> None:
    names = [f"a_rather_long_column_name_{index:04d}" for index in range(1000)]
    tag = drift_report._fit(names)
    kept = json.loads(tag)
    assert len(tag) <= 8000
    assert kept[-1] == "..."
    assert kept[:-1] == names[: len(kept) - 1]
    assert json.loads(drift_report._fit(["a", "b"])) == ["a", "b"]
