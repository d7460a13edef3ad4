"""Drift: how far a current sample of a model's data (a new dataset, captured live traffic) has moved
from its reference (the champion's training data), column by column. Pure: frames in, a report out.

Why scipy and not Evidently, which the field uses and issue 11 asked for: Evidently 0.7.23 (the
newest) resolves against our pins, since it sets no upper bound on pandas, but it does not import
with pandas 3.1.1: `evidently.legacy.tests.data_integrity_tests` imports
`pandas.core.dtypes.common.infer_dtype_from_object`, which pandas 3 removed (ImportError at
`import evidently`). Installed, it also takes 694 MiB with its dependencies (pyarrow through
`pandas[parquet]` 165, plotly 95, statsmodels 44, ...), far over what a Lambda function may hold
(250 MiB) for the scheduled report. So the statistics are scipy's, chosen as Evidently's defaults
choose: with a reference of up to 1000 rows a column is tested (two-sample Kolmogorov-Smirnov for
numbers, chi-square for categories; drifted below p = 0.05 shared among the columns, Bonferroni's
way); with more rows a test flags differences too small to matter, so a distance is measured
(Wasserstein in reference standard deviations for numbers, Jensen-Shannon for categories; drifted
from 0.1). The contract's `monitoring:` section sets the method and threshold per column.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, computed_field
from scipy import stats
from scipy.spatial import distance

from common.contracts import CategoricalColumn, DataContract, DriftMethod, Monitoring

# Each side is sampled down to this many rows (seeded, so a report is reproducible): the statistics
# settle long before, and a report stays cheap on a trainer or in a Lambda function.
MAX_ROWS = 100_000
# Up to this many reference rows a column is tested; above it a distance is used (Evidently's rule).
SMALL_SAMPLE_ROWS = 1000
SAMPLE_SEED = 20261129
DEFAULT_THRESHOLDS: dict[DriftMethod, float] = {
    DriftMethod.ks: 0.05,
    DriftMethod.chi2: 0.05,
    DriftMethod.psi: 0.2,
    DriftMethod.jensenshannon: 0.1,
    DriftMethod.wasserstein: 0.1,
}
P_VALUE_METHODS = frozenset({DriftMethod.ks, DriftMethod.chi2})
HISTOGRAM_BINS = 20
_PSI_BINS = 10
# Empty bins would make PSI infinite; this is the usual floor on a bin's share.
_PSI_FLOOR = 1e-4
_OTHER = "(other)"


def training_report_prefix(model: str, run_id: str) -> str:
    """In the models bucket: the pre-training report of one training run (report.html, report.json)."""
    return f"{model}/drift/training/{run_id}/"


def live_summary_key(model: str) -> str:
    """In the models bucket: the latest scheduled report on live traffic, with a `report` URI inside."""
    return f"{model}/drift/latest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Histogram(_Frozen):
    """Shares of each side per bin (numbers) or category, for the report's pictures."""

    labels: list[str]
    reference: list[float]
    current: list[float]


class ColumnDrift(_Frozen):
    column: str
    role: Literal["feature", "target"]
    kind: Literal["numeric", "categorical"]
    method: DriftMethod
    # The test's statistic or the distance itself (then equal to `score`).
    statistic: float
    p_value: float | None = None
    score: float | None = None
    threshold: float
    drifted: bool
    reference_size: int
    current_size: int
    histogram: Histogram

    @property
    def rule(self) -> str:
        """How `drifted` follows from the numbers, for people."""
        if self.p_value is not None:
            return f"p = {self.p_value:.3g} {'<' if self.drifted else '>='} {self.threshold:.3g}"
        return f"{self.method} = {self.score:.3g} {'>=' if self.drifted else '<'} {self.threshold:.3g}"


class DriftReport(_Frozen):
    columns: dict[str, ColumnDrift]
    # Columns that could not be compared, with why (no values on one side, absent from a frame).
    skipped: dict[str, str] = Field(default_factory=dict)
    reference_rows: int
    current_rows: int
    sampled_to: int = MAX_ROWS
    # What the report is about (model, versions, where the data came from): set by the caller.
    context: dict[str, str] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drifted(self) -> bool:
        return bool(self.drifted_columns)

    def with_context(self, **context: str) -> DriftReport:
        return self.model_copy(update={"context": {**self.context, **context}})

    def summary(self) -> dict[str, Any]:
        """The report without its histograms: what a tag, an event or a terminal shows."""
        return {
            "drifted": self.drifted,
            "drifted_columns": self.drifted_columns,
            "columns_checked": len(self.columns),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "context": self.context,
            "columns": {
                name: column.model_dump(mode="json", exclude={"histogram"})
                for name, column in self.columns.items()
            },
            "skipped": self.skipped,
        }

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> DriftReport:
        document = json.loads(text)
        for derived in cls.model_computed_fields:
            document.pop(derived, None)
        return cls.model_validate(document)

    def to_html(self, title: str = "Drift report") -> str:
        return _render_html(self, title)


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    contract: DataContract,
    monitoring: Monitoring | None = None,
    max_rows: int = MAX_ROWS,
) -> DriftReport:
    """Each feature of the contract, and its target where both frames have it (target drift).
    `monitoring` defaults to the contract's own."""
    monitoring = monitoring or contract.monitoring
    reference_rows, current_rows = len(reference), len(current)
    reference, current = _sample(reference, max_rows), _sample(current, max_rows)
    pairs: dict[str, tuple[pd.Series, pd.Series]] = {}
    skipped: dict[str, str] = {}
    for name in [*contract.features, contract.target]:
        missing = [
            side for side, frame in (("reference", reference), ("current", current)) if name not in frame
        ]
        if missing:
            if name != contract.target:  # a target absent from unlabelled traffic is expected, not news
                skipped[name] = f"absent from the {' and '.join(missing)} data"
            continue
        categorical = isinstance(contract.columns[name], CategoricalColumn)
        left, right = _values(reference[name], categorical), _values(current[name], categorical)
        if left.empty or right.empty:
            skipped[name] = f"no values in the {'reference' if left.empty else 'current'} data"
            continue
        pairs[name] = left, right
    columns: dict[str, ColumnDrift] = {}
    for name, (left, right) in pairs.items():
        categorical = isinstance(contract.columns[name], CategoricalColumn)
        method, threshold = monitoring.setting_for(name)
        method = method or _auto_method(categorical, len(left))
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[method]
            if method in P_VALUE_METHODS:
                # Bonferroni: at 0.05 a column each, one report in four of six unchanged columns
                # would flag one by chance; this keeps it to one in twenty for the whole report.
                threshold /= len(pairs)
        role: Literal["feature", "target"] = "target" if name == contract.target else "feature"
        columns[name] = _compare_column(name, role, categorical, left, right, method, threshold)
    return DriftReport(
        columns=columns,
        skipped=skipped,
        reference_rows=reference_rows,
        current_rows=current_rows,
        sampled_to=max_rows,
    )


def _sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    return frame.sample(n=max_rows, random_state=SAMPLE_SEED) if len(frame) > max_rows else frame


def _values(series: pd.Series, categorical: bool) -> pd.Series:
    present = series.dropna()
    if categorical:
        return present.astype(str)
    return pd.to_numeric(present, errors="coerce").dropna().astype(float)


def _auto_method(categorical: bool, reference_size: int) -> DriftMethod:
    if reference_size <= SMALL_SAMPLE_ROWS:
        return DriftMethod.chi2 if categorical else DriftMethod.ks
    return DriftMethod.jensenshannon if categorical else DriftMethod.wasserstein


def _compare_column(
    name: str,
    role: Literal["feature", "target"],
    categorical: bool,
    reference: pd.Series,
    current: pd.Series,
    method: DriftMethod,
    threshold: float,
) -> ColumnDrift:
    statistic, p_value = _statistic(method, categorical, reference, current)
    if method in P_VALUE_METHODS:
        drifted, score = p_value is not None and p_value < threshold, None
    else:
        drifted, score = statistic >= threshold, statistic
    return ColumnDrift(
        column=name,
        role=role,
        kind="categorical" if categorical else "numeric",
        method=method,
        statistic=statistic,
        p_value=p_value,
        score=score,
        threshold=threshold,
        drifted=bool(drifted),
        reference_size=len(reference),
        current_size=len(current),
        histogram=_histogram(categorical, reference, current),
    )


def _statistic(
    method: DriftMethod, categorical: bool, reference: pd.Series, current: pd.Series
) -> tuple[float, float | None]:
    if method is DriftMethod.ks:
        result = stats.ks_2samp(reference.to_numpy(), current.to_numpy())
        return float(result.statistic), float(result.pvalue)
    if method is DriftMethod.chi2:
        counts = pd.DataFrame({"reference": reference.value_counts(), "current": current.value_counts()})
        table = counts.fillna(0).to_numpy().T
        if table.shape[1] < 2:  # one category on both sides: nothing can have moved
            return 0.0, 1.0
        chi2, p_value, _, _ = stats.chi2_contingency(table)
        return float(chi2), float(p_value)
    if method is DriftMethod.wasserstein:
        spread = max(float(reference.std(ddof=0)), 1e-3)
        return float(stats.wasserstein_distance(reference.to_numpy(), current.to_numpy())) / spread, None
    left, right = _shares(categorical, reference, current, psi=method is DriftMethod.psi)
    if method is DriftMethod.psi:
        left, right = np.clip(left, _PSI_FLOOR, None), np.clip(right, _PSI_FLOOR, None)
        return float(np.sum((right - left) * np.log(right / left))), None
    value = float(distance.jensenshannon(left, right, base=2))
    return (0.0 if math.isnan(value) else value), None


def _shares(
    categorical: bool, reference: pd.Series, current: pd.Series, psi: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Each side's share per category, or per bin of numbers: PSI's bins are the reference's
    deciles (its usual definition); the others' span both sides (Sturges' rule, as Evidently)."""
    if categorical:
        categories = sorted(set(reference.unique()) | set(current.unique()))
        left = reference.value_counts(normalize=True).reindex(categories, fill_value=0.0)
        right = current.value_counts(normalize=True).reindex(categories, fill_value=0.0)
        return left.to_numpy(dtype=float), right.to_numpy(dtype=float)
    if psi:
        inner = np.unique(np.quantile(reference.to_numpy(), np.linspace(0, 1, _PSI_BINS + 1)[1:-1]))
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
    else:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    left_counts, _ = np.histogram(reference, bins=edges)
    right_counts, _ = np.histogram(current, bins=edges)
    return left_counts / max(left_counts.sum(), 1), right_counts / max(right_counts.sum(), 1)


def _histogram(categorical: bool, reference: pd.Series, current: pd.Series) -> Histogram:
    if categorical:
        left = reference.value_counts(normalize=True)
        right = current.value_counts(normalize=True)
        order = list(
            pd.concat([left, right], axis=1).fillna(0).sum(axis=1).sort_values(ascending=False).index
        )
        shown, rest = order[: HISTOGRAM_BINS - 1], order[HISTOGRAM_BINS - 1 :]
        labels = [str(label) for label in shown]
        reference_shares = [float(left.get(label, 0.0)) for label in shown]
        current_shares = [float(right.get(label, 0.0)) for label in shown]
        if rest:
            labels.append(_OTHER)
            reference_shares.append(float(left.reindex(rest, fill_value=0).sum()))
            current_shares.append(float(right.reindex(rest, fill_value=0).sum()))
        return Histogram(labels=labels, reference=reference_shares, current=current_shares)
    span = (min(reference.min(), current.min()), max(reference.max(), current.max()))
    # A bin count and a range, not edges: numpy then bins by arithmetic instead of sorting.
    left_counts, edges = np.histogram(reference, bins=HISTOGRAM_BINS, range=span)
    right_counts, _ = np.histogram(current, bins=HISTOGRAM_BINS, range=span)
    return Histogram(
        labels=[f"{low:.4g} to {high:.4g}" for low, high in itertools.pairwise(edges)],
        reference=[float(count) / len(reference) for count in left_counts],
        current=[float(count) / len(current) for count in right_counts],
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4em 0.8em; text-align: left; vertical-align: middle; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.drifted td { background: #fff0f0; }
.verdict { font-weight: bold; }
.legend span { display: inline-block; width: 0.8em; height: 0.8em; margin: 0 0.3em 0 1em; }
"""
_REFERENCE_COLOUR, _CURRENT_COLOUR = "#9aa5b1", "#d9480f"


def _render_html(report: DriftReport, title: str) -> str:
    """One self-contained page (no scripts, no external assets): it opens from an S3 console, a
    mail attachment or MLflow's artifact viewer alike."""
    escape = html.escape
    verdict = (
        f"Drift in {len(report.drifted_columns)} of {len(report.columns)} columns: "
        + ", ".join(report.drifted_columns)
        if report.drifted
        else f"No drift in the {len(report.columns)} columns checked"
    )
    context = "".join(
        f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in report.context.items()
    )
    rows = "".join(_html_row(column) for column in report.columns.values())
    skipped = "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in report.skipped.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="verdict">{escape(verdict)}</p>
<table>{context}
<tr><th>reference rows</th><td>{report.reference_rows}</td></tr>
<tr><th>current rows</th><td>{report.current_rows}</td></tr>
<tr><th>sampled to</th><td>at most {report.sampled_to} rows a side</td></tr></table>
<p class="legend">Histograms:<span style="background:{_REFERENCE_COLOUR}"></span>reference
<span style="background:{_CURRENT_COLOUR}"></span>current</p>
<table>
<tr><th>column</th><th>role</th><th>method</th><th>statistic</th><th>p-value</th><th>threshold</th>
<th>drifted</th><th>reference / current values</th><th>distribution</th></tr>
{rows}
</table>
{f"<h2>Not compared</h2><ul>{skipped}</ul>" if skipped else ""}
</body></html>
"""


def _html_row(column: ColumnDrift) -> str:
    escape = html.escape
    p_value = "" if column.p_value is None else f"{column.p_value:.3g}"
    return (
        f'<tr class="{"drifted" if column.drifted else "stable"}">'
        f"<td>{escape(column.column)}</td><td>{column.role} ({column.kind})</td>"
        f"<td>{column.method.value}</td><td class='number'>{column.statistic:.4g}</td>"
        f"<td class='number'>{p_value}</td><td class='number'>{column.threshold:.3g}</td>"
        f"<td>{'yes' if column.drifted else 'no'}</td>"
        f"<td class='number'>{column.reference_size} / {column.current_size}</td>"
        f"<td>{_svg_histogram(column.histogram, escape(column.rule))}</td></tr>"
    )


def _svg_histogram(histogram: Histogram, caption: str, width: int = 260, height: int = 60) -> str:
    """Paired bars per bin, reference then current, scaled to the largest share."""
    count = max(len(histogram.labels), 1)
    slot = width / count
    top = max([*histogram.reference, *histogram.current, 1e-12])
    bars = []
    for index, label in enumerate(histogram.labels):
        for offset, (share, colour) in enumerate(
            ((histogram.reference[index], _REFERENCE_COLOUR), (histogram.current[index], _CURRENT_COLOUR))
        ):
            bar_height = height * share / top
            x = index * slot + offset * slot / 2
            bars.append(
                f'<rect x="{x:.1f}" y="{height - bar_height:.1f}" width="{max(slot / 2 - 0.5, 0.5):.1f}" '
                f'height="{bar_height:.1f}" fill="{colour}"><title>{html.escape(label)}: '
                f"{'reference' if offset == 0 else 'current'} {share:.1%}</title></rect>"
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{caption}</title>{"".join(bars)}</svg>'
    )
