"""`arrival drift --model NAME`: the drift reports of a model, newest first. Each version's report on
the data it was trained on (worker/drift_report.py, from its tags), and the latest scheduled report
on live traffic, if the stack keeps one (`<model>/drift/latest.json` in the models bucket)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cli.operations import OperationError, outputs_of
from common import drift
from common.adapters import s3

if TYPE_CHECKING:
    from common.adapters.tracking import ModelVersion


@dataclass(frozen=True)
class VersionDrift:
    version: str
    status: str
    drifted_columns: list[str]
    columns_checked: int | None
    champion_version: str | None
    report: str | None
    summary: str | None
    mlflow_url: str | None


@dataclass(frozen=True)
class DriftOverview:
    model: str
    champion: str | None
    versions: list[VersionDrift] = field(default_factory=list)
    # The scheduled report's own summary document, as it was stored; None when there is none yet.
    live: dict[str, Any] | None = None
    live_key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overview(model: str, stack_name: str, limit: int = 5) -> DriftOverview:
    from common.adapters import tracking

    models_bucket = outputs_of(stack_name)["ModelsBucketName"]
    versions = tracking.versions_of(model)
    live_key = drift.live_summary_key(model)
    found = s3.get_bytes(models_bucket, live_key)
    if not versions and found is None:
        raise OperationError(
            f"model {model!r} has no versions and no drift report yet: upload data for it "
            "(`arrival upload FILE --model NAME`), or see `arrival status` for the models there are"
        )
    champion = tracking.champion(model) if versions else None
    return DriftOverview(
        model=model,
        champion=champion.version if champion else None,
        versions=[_version_drift(version, tracking.artifact_url) for version in reversed(versions)][:limit],
        live=_live_summary(found[0]) if found else None,
        live_key=f"s3://{models_bucket}/{live_key}",
    )


def _version_drift(version: ModelVersion, artifact_url: Callable[[str, str], str]) -> VersionDrift:
    tags = version.tags
    status = tags.get("drift.status", "no report (trained before drift reports, or not finished)")
    has_report = "drift.report" in tags
    return VersionDrift(
        version=version.version,
        status=status,
        drifted_columns=json.loads(tags.get("drift.drifted_columns", "[]")),
        columns_checked=int(tags["drift.columns_checked"]) if "drift.columns_checked" in tags else None,
        champion_version=tags.get("drift.champion_version"),
        report=tags.get("drift.report"),
        summary=tags.get("drift.summary"),
        mlflow_url=artifact_url(version.run_id, "drift/report.html") if has_report else None,
    )


def _live_summary(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {"error": "the stored summary is not JSON"}
    return document if isinstance(document, dict) else {"error": "the stored summary is not a JSON object"}


def render(view: DriftOverview) -> list[str]:
    """Plain lines for a terminal."""
    champion = f"champion version {view.champion}" if view.champion else "no champion"
    lines = [f"{view.model}: {champion}", "", "training data, per version (newest first):"]
    if not view.versions:
        lines.append("  no versions yet")
    for version in view.versions:
        lines.append(f"  version {version.version}: {_verdict(version)}")
        lines.extend(f"    {name}: {where}" for name, where in _links(version))
    lines += ["", "live traffic (the latest scheduled report):"]
    if view.live is None:
        lines.append(f"  none yet ({view.live_key} does not exist)")
    else:
        lines.extend(_live_lines(view.live))
    return lines


def _verdict(version: VersionDrift) -> str:
    against = f" against version {version.champion_version}" if version.champion_version else ""
    if version.columns_checked is None:
        return version.status
    if version.drifted_columns:
        columns = ", ".join(version.drifted_columns)
        return f"drift in {columns} ({len(version.drifted_columns)} of {version.columns_checked}){against}"
    return f"no drift in the {version.columns_checked} columns checked{against}"


def _links(version: VersionDrift) -> list[tuple[str, str]]:
    found = [("report", version.report), ("summary", version.summary), ("in MLflow", version.mlflow_url)]
    return [(name, where) for name, where in found if where]


def _live_lines(live: dict[str, Any]) -> list[str]:
    """The scheduled report's summary (common/monitoring.py writes it): its verdict, then its plain
    fields; whatever it lacks is left out."""
    columns, checked = live.get("drifted_columns"), live.get("columns_checked")
    lines = [f"  {live['error']}"] if "error" in live else []
    of_checked = f" of {checked} checked" if isinstance(checked, int) else ""
    if isinstance(columns, list) and columns:
        lines.append(f"  drift in {', '.join(map(str, columns))} ({len(columns)}{of_checked})")
    elif isinstance(columns, list):
        lines.append(f"  no drift in the {checked} columns checked" if of_checked else "  no drift")
    shown = ("version", "generated_at", "reference_rows", "current_rows", "report", "summary")
    lines.extend(
        f"  {key}: {live[key]}" for key in shown if key in live and not isinstance(live[key], dict | list)
    )
    return lines


def report_now(model: str, stack_name: str) -> dict[str, Any]:
    """Run the stack's drift function on one model now, as its schedule does, and return what it
    found (common/monitoring.py's ModelDrift, as the function answers it)."""
    from common.adapters import functions

    name = outputs_of(stack_name).get("DriftFunctionName")
    if not name:
        raise OperationError(f"stack {stack_name} has no drift function (DriftFunctionName): deploy it again")
    try:
        answer = functions.invoke(name, {"models": [model]})
    except functions.FunctionFailedError as error:
        raise OperationError(f"the drift function failed: {error}; `arrival logs drift` says more") from error
    found: list[dict[str, Any]] = (answer or {}).get("models", [])
    if not found:
        raise OperationError(f"the drift function reported nothing for model {model!r}")
    return found[0]
