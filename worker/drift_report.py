"""The pre-training drift report: the datasets a training adds, against the data the champion was
trained on (issue 11). It informs and never decides: whatever goes wrong here is logged and tagged,
and the training goes on."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from common import drift
from common.adapters import events, s3, tracking
from common.adapters.stack import StackResources
from common.contracts import DataContract
from worker.decision import source_uris

LOG = logging.getLogger("arrival.worker.drift")
KIND = "training_data"
# Tag values MLflow keeps whole (worker/train_model.py's TAG_VALUE_LIMIT; not imported: a cycle).
_TAG_LIMIT = 8000


@dataclass(frozen=True)
class DriftOutcome:
    """What the training logs of its drift report: run tags, version tags, artifacts, and the
    DriftDetected event to publish once the version exists (None when nothing drifted)."""

    run_tags: dict[str, str]
    version_tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)
    event: dict[str, Any] | None = None
    seconds: float = 0.0


def training_report(
    contract: DataContract,
    accepted: dict[str, Any],
    resources: StackResources,
    run_id: str,
    scratch: Path,
) -> DriftOutcome:
    """Never raises: a report that cannot be made is a tag saying why. Its files go in
    `scratch/drift/`, which must outlive the outcome's artifacts' logging."""
    started = time.monotonic()
    try:
        scratch = scratch / "drift"
        scratch.mkdir(parents=True, exist_ok=True)
        outcome = _report(contract, accepted, resources, run_id, scratch)
    except Exception as error:
        LOG.warning("the drift report of %s failed; training goes on", contract.model, exc_info=True)
        reason = f"{type(error).__name__}: {error}"[:_TAG_LIMIT]
        outcome = DriftOutcome(
            run_tags={"drift.status": "error", "drift.error": reason},
            version_tags={"drift.status": "error"},
        )
    seconds = time.monotonic() - started
    return DriftOutcome(outcome.run_tags, outcome.version_tags, outcome.artifacts, outcome.event, seconds)


def _report(
    contract: DataContract, accepted: dict[str, Any], resources: StackResources, run_id: str, scratch: Path
) -> DriftOutcome:
    champion = tracking.champion(contract.model)
    if champion is None:
        return _status("no champion: nothing to compare the data with")
    champion_list = json.loads(
        tracking.download_run_artifacts(
            champion.run_id, "workspace/data/accepted.json", scratch / "champion"
        ).read_text()
    )
    known = {entry["content_hash"] for entry in champion_list["datasets"]}
    arriving = [entry for entry in accepted["datasets"] if entry["content_hash"] not in known]
    if not arriving:
        return _status(f"no dataset arrived since champion version {champion.version}'s training")
    # The champion's list records the bucket it was read from; this run's list is in the stack's.
    reference = _read(
        champion_list.get("bucket", resources.processed_bucket), champion_list["datasets"], scratch
    )
    current = _read(resources.processed_bucket, arriving, scratch)
    report = drift.compare(reference, current, contract).with_context(
        model=contract.model,
        kind=KIND,
        champion_version=champion.version,
        run_id=run_id,
        reference=f"the {len(champion_list['datasets'])} dataset(s) it was trained on",
        current=", ".join(source_uris({"datasets": arriving})),
    )
    return _publishable(contract.model, report, resources, run_id, champion.version, scratch)


def _publishable(
    model: str,
    report: drift.DriftReport,
    resources: StackResources,
    run_id: str,
    champion_version: str,
    scratch: Path,
) -> DriftOutcome:
    html_path, json_path = scratch / "report.html", scratch / "report.json"
    title = f"{model}: new data against the training data of champion version {champion_version}"
    html_path.write_text(report.to_html(title=title))
    json_path.write_text(report.to_json())
    prefix = drift.training_report_prefix(model, run_id)
    s3.put_bytes(resources.models_bucket, f"{prefix}report.html", html_path.read_bytes(), "text/html")
    s3.put_bytes(resources.models_bucket, f"{prefix}report.json", json_path.read_bytes(), "application/json")
    report_uri = f"s3://{resources.models_bucket}/{prefix}report.html"
    summary_uri = f"s3://{resources.models_bucket}/{prefix}report.json"
    summary = {
        "drift.status": "drifted" if report.drifted else "no drift",
        "drift.drifted_columns": _fit(report.drifted_columns),
        "drift.columns_checked": str(len(report.columns)),
        "drift.champion_version": champion_version,
        "drift.report": report_uri,
        "drift.summary": summary_uri,
        "drift.report_mlflow": f"runs:/{run_id}/drift/report.html",
    }
    event = None
    if report.drifted:
        event = {
            "name": model,
            "version": champion_version,
            "kind": KIND,
            "drifted_columns": report.drifted_columns,
            "report": report_uri,
            "summary": summary_uri,
        }
    return DriftOutcome(
        run_tags=summary,
        version_tags=summary,
        artifacts=[("drift", html_path), ("drift", json_path)],
        event=event,
    )


def publish(resources: StackResources, outcome: DriftOutcome) -> None:
    """DriftDetected, once the version exists; an event that cannot go out is logged, not raised."""
    if outcome.event is None:
        return
    try:
        events.publish(resources.event_bus_name, "DriftDetected", outcome.event)
    except Exception:
        LOG.warning("could not publish DriftDetected for %s", outcome.event["name"], exc_info=True)


def _status(reason: str) -> DriftOutcome:
    return DriftOutcome(run_tags={"drift.status": reason}, version_tags={"drift.status": reason})


def _read(bucket: str, datasets: list[dict[str, Any]], scratch: Path) -> pd.DataFrame:
    """The datasets' processed Parquet files, each sampled as it is read by the share that leaves
    about `drift.MAX_ROWS` rows in all (the accepted list counts each file's rows)."""
    total = sum(int(entry.get("rows", 0)) for entry in datasets)
    share = min(1.0, drift.MAX_ROWS / total) if total else 1.0
    frames = []
    with tempfile.TemporaryDirectory(dir=scratch) as downloads:
        for entry in datasets:
            local = Path(downloads) / f"{entry['content_hash']}.parquet"
            try:
                s3.download(s3.head_object(bucket, entry["processed_key"]), local)
            except Exception as error:
                raise LookupError(f"cannot read s3://{bucket}/{entry['processed_key']}: {error}") from error
            frame = pd.read_parquet(local)
            local.unlink()
            frames.append(frame if share >= 1 else frame.sample(frac=share, random_state=drift.SAMPLE_SEED))
    return pd.concat(frames, ignore_index=True)


def _fit(columns: list[str]) -> str:
    """A JSON list of column names, cut (and said so) where a tag would be."""
    text = json.dumps(columns)
    if len(text) <= _TAG_LIMIT:
        return text
    kept: list[str] = []
    size = len(json.dumps(["..."]))
    for name in columns:
        size += len(json.dumps(name)) + 2  # ", " after it
        if size > _TAG_LIMIT:
            break
        kept.append(name)
    return json.dumps([*kept, "..."])
