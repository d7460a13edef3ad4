"""The scheduled drift report: each champion's captured live traffic against its training data.

For each model with a serving pointer, the records serving captured in the window (the last day by
default; serving/capture.py writes them by hour) are compared, column by column, with a sample of
the data the champion was trained on (common/drift.py). The reference is read once per champion
version, from the processed datasets its bundle's lineage names by content hash (content-addressed,
never overwritten), and kept beside the reports as a sample of at most `reference_rows` rows; the
function's later runs read only that. The report goes to the models bucket as HTML and JSON, with a
`latest.json` summary, and `DriftDetected` is published when the contract's thresholds are crossed.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import fastparquet
import pandas as pd
from pydantic import BaseModel, ConfigDict

from common.adapters import events, s3
from common.bundles import POINTERS_PREFIX, BundleManifest, ServingPointer, model_of_pointer_key
from common.drift import DriftReport, compare, live_summary_key
from common.layout import capture_hour_prefix, drift_prefix
from common.observability import logger
from common.settings import MonitoringSettings

KIND = "live_traffic"
# Seeded, so the same captured objects give the same report.
SAMPLE_SEED = 20261129


class DriftRequest(BaseModel):
    """The invocation's event: the schedule's (which names no model: every champion is reported), or
    one naming the models to report now, e.g. `{"models": ["iris"]}`."""

    model_config = ConfigDict(extra="ignore")

    models: list[str] | None = None


Status = Literal["drifted", "no_drift", "too_little_traffic", "failed"]


@dataclass(frozen=True)
class ModelDrift:
    """What one run found for one model."""

    model: str
    status: Status
    version: str | None = None
    rows: int = 0
    drifted_columns: list[str] = field(default_factory=list)
    report: str | None = None
    summary: str | None = None
    reason: str = ""


def report_key(model: str, at: datetime, suffix: str) -> str:
    return f"{drift_prefix(model)}{at:%Y%m%dT%H%M%SZ}/report.{suffix}"


def reference_key(model: str, version: str) -> str:
    return f"{drift_prefix(model)}reference/{version}.parquet"


def report_live_drift(
    settings: MonitoringSettings, models: list[str] | None = None, now: datetime | None = None
) -> list[ModelDrift]:
    """Every model with a champion (or those named); one model's failure is logged and reported,
    and the others still run."""
    now = now or datetime.now(UTC)
    champions = models if models is not None else _models_with_pointers(settings.models_bucket)
    outcomes = []
    for model in champions:
        try:
            outcome = report_model(settings, model, now)
        except Exception as error:  # one model's bad bundle or data must not hide the others' drift
            logger.exception("drift report failed", extra={"model": model})
            outcome = ModelDrift(model, "failed", reason=f"{type(error).__name__}: {error}")
        logger.info("drift report", extra=asdict(outcome))
        outcomes.append(outcome)
    return outcomes


def report_model(settings: MonitoringSettings, model: str, now: datetime) -> ModelDrift:
    manifest = _champion(settings.models_bucket, model)
    if manifest is None:
        return ModelDrift(model, "failed", reason="no serving pointer or bundle")
    start = now - timedelta(hours=settings.window_hours)
    current = captured_inputs(settings, model, start, now)
    if len(current) < settings.min_rows:
        reason = (
            f"{len(current)} captured records since {start:%Y-%m-%dT%H:%MZ}, fewer than {settings.min_rows}"
        )
        return ModelDrift(model, "too_little_traffic", manifest.version, len(current), reason=reason)
    reference = reference_sample(settings, manifest)
    report = compare(reference, current, manifest.contract).with_context(
        model=model,
        version=manifest.version,
        kind=KIND,
        window_start=start.isoformat(timespec="seconds"),
        window_end=now.isoformat(timespec="seconds"),
        reference=f"s3://{settings.models_bucket}/{reference_key(model, manifest.version)}",
    )
    html_uri, json_uri = _write_report(settings.models_bucket, model, now, report, manifest.version)
    if report.drifted:
        detail = {
            "name": model,
            "version": manifest.version,
            "kind": KIND,
            "drifted_columns": report.drifted_columns,
            "report": html_uri,
            "summary": json_uri,
        }
        events.publish(settings.event_bus_name, "DriftDetected", detail)
    status: Status = "drifted" if report.drifted else "no_drift"
    return ModelDrift(
        model, status, manifest.version, len(current), report.drifted_columns, html_uri, json_uri
    )


def _models_with_pointers(bucket: str) -> list[str]:
    keys = (key for key, _ in s3.list_objects(bucket, POINTERS_PREFIX))
    return sorted(model for key in keys if (model := model_of_pointer_key(key)))


def _champion(bucket: str, model: str) -> BundleManifest | None:
    pointer = s3.get_bytes(bucket, f"{POINTERS_PREFIX}{model}.json")
    if pointer is None:
        return None
    manifest = s3.get_bytes(bucket, ServingPointer.model_validate_json(pointer[0]).manifest_key)
    return BundleManifest.model_validate_json(manifest[0]) if manifest else None


def captured_inputs(settings: MonitoringSettings, model: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The inputs serving captured for the model between start and end, one row per record. Over
    `max_rows`, whole objects are picked at random (seeded) until there are enough: each object is
    itself a random sample of its time."""
    keys = [
        key
        for hour in _hours(start, end)
        for key, _ in s3.list_objects(settings.capture_bucket, capture_hour_prefix(model, hour))
    ]
    random.Random(SAMPLE_SEED).shuffle(keys)  # noqa: S311  # sampling, not crypto
    rows: list[dict[str, Any]] = []
    for key in keys:
        if len(rows) >= settings.max_rows:
            break
        found = s3.get_bytes(settings.capture_bucket, key)
        if found is None:  # expired between the listing and the read
            continue
        for text in gzip.decompress(found[0]).splitlines():
            line = json.loads(text)
            if start <= datetime.fromisoformat(line["time"]) <= end:
                rows.extend(captured_records(line))
    return pd.DataFrame.from_records(rows[: settings.max_rows])


def captured_records(line: dict[str, Any]) -> list[dict[str, Any]]:
    """The inputs of one capture line: a request's (`inputs`, serving/capture.py), or, as servers
    before that format wrote them, a line per record (`input`), which a day's window may still hold."""
    inputs = line.get("inputs")
    return inputs if isinstance(inputs, list) else [line["input"]]


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour <= end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def reference_sample(settings: MonitoringSettings, manifest: BundleManifest) -> pd.DataFrame:
    """At most `reference_rows` rows of the champion's training data: the sample kept for its
    version, or one drawn now from the processed datasets its lineage names, and kept."""
    key = reference_key(manifest.model, manifest.version)
    with tempfile.TemporaryDirectory(prefix="arrival-drift-") as scratch:
        local = Path(scratch) / "reference.parquet"
        kept = s3.get_bytes(settings.models_bucket, key)
        if kept is not None:
            local.write_bytes(kept[0])
            return _read_parquet(local)
        frames = []
        for content_hash in manifest.lineage.content_hashes:
            processed = f"{manifest.model}/data/{content_hash}.parquet"
            found = s3.get_bytes(settings.processed_bucket, processed)
            if found is None:
                raise FileNotFoundError(
                    f"the training data of {manifest.model} version {manifest.version} is gone: "
                    f"no s3://{settings.processed_bucket}/{processed}"
                )
            local.write_bytes(found[0])
            frames.append(_read_parquet(local))
        reference = _sample(pd.concat(frames, ignore_index=True), settings.reference_rows)
        fastparquet.write(str(local), reference, compression="ZSTD", write_index=False)
        s3.put_bytes(settings.models_bucket, key, local.read_bytes())
    return reference


def _read_parquet(path: Path) -> pd.DataFrame:
    # fastparquet's own API, as common/tabular.py: pandas deprecates its engine="fastparquet", and
    # pyarrow would take the function past Lambda's size limit beside scipy.
    frame: pd.DataFrame = fastparquet.ParquetFile(str(path)).to_pandas()
    return frame


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=SAMPLE_SEED).reset_index(drop=True)


def _write_report(
    bucket: str, model: str, at: datetime, report: DriftReport, version: str
) -> tuple[str, str]:
    html_key, json_key = report_key(model, at, "html"), report_key(model, at, "json")
    title = f"Live traffic drift: {model} version {version}"
    s3.put_bytes(bucket, html_key, report.to_html(title).encode(), "text/html; charset=utf-8")
    s3.put_bytes(bucket, json_key, report.to_json().encode(), "application/json")
    html_uri, json_uri = f"s3://{bucket}/{html_key}", f"s3://{bucket}/{json_key}"
    latest = {
        **report.summary(),
        "model": model,
        "version": version,
        "kind": KIND,
        "generated_at": at.isoformat(timespec="seconds"),
        "report": html_uri,
        "summary": json_uri,
    }
    s3.put_json(bucket, live_summary_key(model), latest)
    return html_uri, json_uri
