"""The scheduled drift report, against moto: what serving captured in the window, compared with the
champion's training data, gives a report in the models bucket, a `latest.json`, and DriftDetected
when the contract's thresholds are crossed; too little traffic, old traffic and one model's failure
are each handled on their own."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from common.adapters import events
from common.layout import capture_hour_prefix
from common.monitoring import DriftRequest, report_live_drift
from common.settings import MonitoringSettings, get_monitoring_settings
from handlers import handle_drift
from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import datasets, serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish
from tests.unit.conftest import FakeLambdaContext

CAPTURE_BUCKET, PROCESSED_BUCKET, BUS = "unit-capture", "unit-processed", "unit-bus"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
NOW = datetime(2026, 11, 29, 7, 30, tzinfo=UTC)


def _settings(**changes: Any) -> MonitoringSettings:
    values = {
        "MODELS_BUCKET": MODELS_BUCKET,
        "CAPTURE_BUCKET": CAPTURE_BUCKET,
        "PROCESSED_BUCKET": PROCESSED_BUCKET,
        "EVENT_BUS_NAME": BUS,
        "DRIFT_MIN_ROWS": 50,
        **changes,
    }
    return MonitoringSettings.model_validate(values)


@dataclass
class Stack:
    s3: Any
    published: list[tuple[str, str, dict[str, Any]]]

    def json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(entry["Key"] for entry in listed)

    def capture(
        self, model: str, frame: pd.DataFrame, at: datetime, version: str = "3", *, per_record: bool = False
    ) -> None:
        """Records as serving writes them, a line per request of 10 records (tests/unit/test_capture.py
        checks serving's side); `per_record`: a line per record, as servers wrote them before."""
        records = frame[FEATURES].to_dict("records")
        head = {"time": at.isoformat(), "model": model, "version": version, "request_id": "r"}
        if per_record:
            lines = [json.dumps({**head, "input": record}) for record in records]
        else:
            lines = [
                json.dumps({**head, "inputs": records[start : start + 10], "predictions": ["setosa"] * 10})
                for start in range(0, len(records), 10)
            ]
        key = f"{capture_hour_prefix(model, at)}{at:%M%S}-{len(lines)}.jsonl.gz"
        self.s3.put_object(Bucket=CAPTURE_BUCKET, Key=key, Body=gzip.compress("\n".join(lines).encode()))


@pytest.fixture
def stack(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """An iris champion (version 3) trained on two processed datasets, and a recorder of events."""
    with serving_bundles.models_bucket() as s3:
        for bucket in (CAPTURE_BUCKET, PROCESSED_BUCKET):
            s3.create_bucket(Bucket=bucket)
        manifest = publish(s3, serving_bundles.trained("iris", "iris"), "3")
        for seed, content_hash in enumerate(manifest.lineage.content_hashes):
            body = datasets.to_parquet(datasets.iris_frame(300, seed=seed))
            s3.put_object(Bucket=PROCESSED_BUCKET, Key=f"iris/data/{content_hash}.parquet", Body=body)
        published: list[tuple[str, str, dict[str, Any]]] = []
        monkeypatch.setattr(events, "publish", lambda *args: published.append(args))
        yield Stack(s3, published)


def _shifted(rows: int, seed: int) -> pd.DataFrame:
    frame = datasets.iris_frame(rows, seed=seed)
    frame["petal_length"] += 4.0
    frame["petal_width"] += 2.0
    return frame


def test_shifted_traffic_is_reported_and_drift_detected_published(stack: Stack) -> None:
    # GIVEN a shifted half day of traffic for iris
    stack.capture("iris", _shifted(150, seed=7), NOW - timedelta(hours=12))
    stack.capture("iris", _shifted(150, seed=8), NOW - timedelta(minutes=5))

    # WHEN the schedule runs
    (outcome,) = report_live_drift(_settings(), now=NOW)

    # THEN the shifted columns, and only those, are flagged
    assert (outcome.status, outcome.version, outcome.rows) == ("drifted", "3", 300)
    assert sorted(outcome.drifted_columns) == ["petal_length", "petal_width"]
    # AND the report is in the models bucket, as HTML and JSON, with a latest.json naming both
    assert outcome.report == f"s3://{MODELS_BUCKET}/iris/drift/20261129T073000Z/report.html"
    assert outcome.summary == f"s3://{MODELS_BUCKET}/iris/drift/20261129T073000Z/report.json"
    report = stack.json("iris/drift/20261129T073000Z/report.json")
    assert report["context"]["kind"] == "live_traffic" and report["current_rows"] == 300
    html = stack.s3.get_object(Bucket=MODELS_BUCKET, Key="iris/drift/20261129T073000Z/report.html")
    assert b"petal_length" in html["Body"].read()
    latest = stack.json("iris/drift/latest.json")
    assert (latest["version"], latest["drifted"], latest["report"]) == ("3", True, outcome.report)
    assert sorted(latest["drifted_columns"]) == ["petal_length", "petal_width"]
    # AND DriftDetected went to the bus with the agreed fields
    ((bus, detail_type, detail),) = stack.published
    assert (bus, detail_type) == (BUS, "DriftDetected")
    assert detail == {
        "name": "iris",
        "version": "3",
        "kind": "live_traffic",
        "drifted_columns": outcome.drifted_columns,
        "report": outcome.report,
        "summary": outcome.summary,
    }


def test_unshifted_traffic_is_reported_without_an_event(stack: Stack) -> None:
    stack.capture("iris", datasets.iris_frame(300, seed=11), NOW - timedelta(hours=2))

    (outcome,) = report_live_drift(_settings(), now=NOW)

    assert (outcome.status, outcome.drifted_columns) == ("no_drift", [])
    assert stack.json("iris/drift/latest.json")["drifted"] is False
    assert stack.published == []


def test_captures_a_line_per_record_as_earlier_servers_wrote_them_are_read_beside_the_new_ones(
    stack: Stack,
) -> None:
    # GIVEN a day's window holding both formats: an older server's, then an upgraded one's
    stack.capture("iris", _shifted(150, seed=9), NOW - timedelta(hours=3), per_record=True)
    stack.capture("iris", _shifted(150, seed=10), NOW - timedelta(hours=1))

    (outcome,) = report_live_drift(_settings(), now=NOW)

    assert (outcome.status, outcome.rows) == ("drifted", 300)


def test_traffic_outside_the_window_is_left_out_and_too_little_gives_no_report(stack: Stack) -> None:
    # GIVEN plenty of shifted traffic from yesterday, and a little from this hour
    stack.capture("iris", _shifted(500, seed=1), NOW - timedelta(hours=30))
    stack.capture("iris", _shifted(200, seed=2), NOW - timedelta(hours=24, minutes=10))  # hour in, time out
    stack.capture("iris", _shifted(20, seed=3), NOW - timedelta(minutes=1))

    (outcome,) = report_live_drift(_settings(), now=NOW)

    assert (outcome.status, outcome.rows) == ("too_little_traffic", 20)
    assert "fewer than 50" in outcome.reason
    assert stack.keys(MODELS_BUCKET, "iris/drift/") == []
    assert stack.published == []


def test_the_reference_is_drawn_once_per_version_and_kept(stack: Stack) -> None:
    # GIVEN a first report drew the reference from the processed datasets, sampled to 400 rows
    stack.capture("iris", datasets.iris_frame(300, seed=11), NOW - timedelta(hours=2))
    report_live_drift(_settings(DRIFT_REFERENCE_ROWS=400), now=NOW)
    assert stack.keys(MODELS_BUCKET, "iris/drift/reference/") == ["iris/drift/reference/3.parquet"]

    # WHEN the processed data is gone, the next run still has its reference
    for key in stack.keys(PROCESSED_BUCKET):
        stack.s3.delete_object(Bucket=PROCESSED_BUCKET, Key=key)
    (outcome,) = report_live_drift(_settings(DRIFT_REFERENCE_ROWS=400), now=NOW + timedelta(hours=1))

    assert outcome.status == "no_drift"
    assert stack.json(outcome.summary.split(f"{MODELS_BUCKET}/")[1])["reference_rows"] == 400  # type: ignore[union-attr]


def test_one_models_failure_is_reported_and_the_others_still_run(stack: Stack) -> None:
    # GIVEN a second champion whose training data is gone
    houses = serving_bundles.trained("house-prices", "house-prices")
    publish(stack.s3, houses, "7")
    stack.capture("iris", _shifted(300, seed=4), NOW - timedelta(hours=1))
    stack.capture("house-prices", pd.DataFrame(columns=FEATURES), NOW - timedelta(hours=1))
    houses_records = datasets.house_frame(100).drop(columns=["price"])
    lines = [json.dumps({"time": NOW.isoformat(), "input": r}) for r in houses_records.to_dict("records")]
    key = f"{capture_hour_prefix('house-prices', NOW)}x.jsonl.gz"
    stack.s3.put_object(Bucket=CAPTURE_BUCKET, Key=key, Body=gzip.compress("\n".join(lines).encode()))

    outcomes = {outcome.model: outcome for outcome in report_live_drift(_settings(), now=NOW)}

    assert outcomes["house-prices"].status == "failed"
    assert f"no s3://{PROCESSED_BUCKET}/house-prices/data/" in outcomes["house-prices"].reason
    assert outcomes["iris"].status == "drifted"
    assert [detail["name"] for _, _, detail in stack.published] == ["iris"]


def test_captures_written_by_serving_feed_the_report(stack: Stack) -> None:
    # GIVEN serving capturing every request of the champion, to the capture bucket
    settings = ServingSettings(models_bucket=MODELS_BUCKET, capture_bucket=CAPTURE_BUCKET, capture_rate=1.0)
    store = ModelStore(MODELS_BUCKET, max_batch=500)
    client = TestClient(create_app(settings, store=store, api_key=None))
    store.refresh()
    records = _shifted(300, seed=5)[FEATURES].to_dict("records")
    assert client.post("/models/iris/predict", json={"records": records}).status_code == 200
    assert client.app.state.capture.flush() == 300  # type: ignore[attr-defined]

    # WHEN the report runs over the hour just captured
    (outcome,) = report_live_drift(_settings(), now=datetime.now(UTC))

    # THEN it read them all and flagged the shifted columns
    assert (outcome.status, outcome.rows) == ("drifted", 300)
    assert sorted(outcome.drifted_columns) == ["petal_length", "petal_width"]


def test_the_settings_are_read_from_the_functions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MODELS_BUCKET": "m",
        "CAPTURE_BUCKET": "c",
        "PROCESSED_BUCKET": "p",
        "EVENT_BUS_NAME": "b",
        "DRIFT_WINDOW_HOURS": "6",
    }.items():
        monkeypatch.setenv(name, value)
    get_monitoring_settings.cache_clear()
    try:
        settings = get_monitoring_settings()
    finally:
        get_monitoring_settings.cache_clear()
    assert (settings.models_bucket, settings.capture_bucket, settings.window_hours) == ("m", "c", 6)
    assert (settings.min_rows, settings.max_rows, settings.reference_rows) == (100, 100_000, 10_000)


def test_the_schedules_event_reports_every_champion_and_a_list_names_some() -> None:
    scheduled = {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    assert DriftRequest.model_validate(scheduled).models is None
    assert DriftRequest.model_validate({"models": ["iris"]}).models == ["iris"]


def test_the_handler_reports_the_models_the_event_names(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    monkeypatch.setattr(handle_drift, "get_monitoring_settings", _settings)
    stack.capture("iris", _shifted(100, seed=6), datetime.now(UTC))

    result = handle_drift.handler({"models": ["iris"]}, lambda_context)

    ((model,),) = [[entry["model"] for entry in result["models"]]]
    assert model == "iris" and result["models"][0]["status"] == "drifted"
