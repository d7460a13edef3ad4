"""Validating data against its contract with pandera, and the rules a rejected file breaks.

Two passes, because value checks on a column that failed to parse only add noise: first structure
(columns, types, nulls), then values (ranges, categories) on the typed data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from common.contracts import CategoricalColumn, DataContract, NumericColumn


class Rule(StrEnum):
    """Why a file was quarantined. Stable names: reports and alerts key on them."""

    no_contract = "no_contract"
    unsupported_format = "unsupported_format"
    empty_file = "empty_file"
    file_too_large = "file_too_large"
    decompressed_too_large = "decompressed_too_large"
    unreadable = "unreadable"
    header_only = "header_only"
    too_few_rows = "too_few_rows"
    missing_columns = "missing_columns"
    unexpected_columns = "unexpected_columns"
    wrong_type = "wrong_type"
    null_values = "null_values"
    out_of_range = "out_of_range"
    unknown_category = "unknown_category"


# A report travels whole in a DatasetQuarantined event (EventBridge takes 256 KB at most) and is
# read by people, often in a spreadsheet: a file with 10,000 unknown columns or a 100 MB cell must
# not make one that large.
REPORT_LIST_LIMIT = 20
REPORT_EXAMPLES_LIMIT = 5
REPORT_TEXT_LIMIT = 200
REPORT_DETAIL_LIMIT = 2000
# OWASP's CSV-injection advice: a spreadsheet evaluates a cell that starts with one of these.
_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report_text(value: object) -> str:
    """A value taken from a file, as a report may show it: clipped, and inert in a spreadsheet (a
    leading single quote before =, +, -, @, tab or CR). A number such as -2 is left as it is: it is
    no formula, and the data itself is never changed."""
    text = _clipped(str(value), REPORT_TEXT_LIMIT)
    if text.startswith(_FORMULA_TRIGGERS) and not _is_number(text):
        return f"'{text}"
    return text


@dataclass(frozen=True)
class Violation:
    """One broken rule, bounded whatever the file: at most REPORT_LIST_LIMIT columns (the rest
    counted in `columns_omitted`) and REPORT_EXAMPLES_LIMIT examples, each shown by report_text."""

    rule: Rule
    detail: str
    columns: list[str] = field(default_factory=list)
    rows: int = 0
    examples: list[str] = field(default_factory=list)
    columns_omitted: int = 0

    def __post_init__(self) -> None:
        omitted = self.columns_omitted + max(0, len(self.columns) - REPORT_LIST_LIMIT)
        object.__setattr__(self, "columns", [report_text(c) for c in self.columns[:REPORT_LIST_LIMIT]])
        object.__setattr__(self, "columns_omitted", omitted)
        object.__setattr__(self, "examples", [report_text(e) for e in self.examples[:REPORT_EXAMPLES_LIMIT]])
        object.__setattr__(self, "detail", _clipped(self.detail, REPORT_DETAIL_LIMIT))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule.value}


class DatasetRejectedError(Exception):
    """A file that breaks its contract. Carries every violation found, the first one leading."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.rule}: {v.detail}" for v in violations))
        self.violations = violations

    @property
    def rule(self) -> Rule:
        return self.violations[0].rule


def reject(rule: Rule, detail: str, **extra: Any) -> DatasetRejectedError:
    return DatasetRejectedError([Violation(rule, detail, **extra)])


# pandera's names for the checks it runs, as our rules.
_PANDERA_CHECKS = {
    "greater_than_or_equal_to": Rule.out_of_range,
    "less_than_or_equal_to": Rule.out_of_range,
    "isin": Rule.unknown_category,
    "column_in_dataframe": Rule.missing_columns,
    "column_in_schema": Rule.unexpected_columns,
    "not_nullable": Rule.null_values,
    "coerce_dtype": Rule.wrong_type,
    "dtype": Rule.wrong_type,
}


def _rule_of(check: str) -> Rule:
    name = check.split("(", 1)[0]
    return _PANDERA_CHECKS[name]


def _dtype(column: NumericColumn | CategoricalColumn) -> str:
    return "float64" if isinstance(column, NumericColumn) else "str"


def structure_schema(contract: DataContract) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            name: pa.Column(_dtype(column), nullable=column.nullable, coerce=True)
            for name, column in contract.columns.items()
        },
        strict=True,
    )


def _value_checks(column: NumericColumn | CategoricalColumn) -> list[pa.Check]:
    if isinstance(column, CategoricalColumn):
        return [pa.Check.isin(column.categories)]
    checks = []
    if column.min is not None:
        checks.append(pa.Check.ge(column.min))
    if column.max is not None:
        checks.append(pa.Check.le(column.max))
    return checks


def values_schema(contract: DataContract) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            name: pa.Column(checks=_value_checks(column), nullable=True)
            for name, column in contract.columns.items()
        }
    )


def _violations(errors: SchemaErrors, contract: DataContract) -> list[Violation]:
    cases = errors.failure_cases.copy()
    cases["rule"] = cases["check"].astype(str).map(_rule_of)
    # Missing and unexpected columns name the column in failure_case, the rest in column.
    structural = cases["rule"].isin([Rule.missing_columns, Rule.unexpected_columns])
    cases["where"] = cases["column"].where(~structural, cases["failure_case"]).astype(str)
    violations = []
    for rule, group in cases.groupby("rule", sort=False):
        columns = sorted(set(group["where"]))
        rows = int(group["index"].dropna().nunique())
        examples = [str(value) for value in group["failure_case"].drop_duplicates().head(5)]
        detail = _describe(Rule(rule), columns, rows, contract)
        is_structural = rule in {Rule.missing_columns, Rule.unexpected_columns}
        violations.append(Violation(Rule(rule), detail, columns, rows, [] if is_structural else examples))
    order = list(Rule)
    return sorted(violations, key=lambda violation: order.index(violation.rule))


def _listed(names: list[str]) -> str:
    shown = ", ".join(report_text(name) for name in names[:REPORT_LIST_LIMIT])
    more = len(names) - REPORT_LIST_LIMIT
    return f"{shown} and {more} more" if more > 0 else shown


def _describe(rule: Rule, columns: list[str], rows: int, contract: DataContract) -> str:
    names = _listed(columns)
    descriptions = {
        Rule.missing_columns: f"columns required by the contract are missing: {names}",
        Rule.unexpected_columns: f"columns not in the contract: {names}",
        Rule.wrong_type: f"values that are not numbers in numeric column(s) {names} ({rows} rows)",
        Rule.null_values: f"missing values in non-nullable column(s) {names} ({rows} rows)",
        Rule.out_of_range: f"values outside the contract's range in {names} ({rows} rows)",
        Rule.unknown_category: f"categories not in the contract in {names} ({rows} rows)",
    }
    return descriptions.get(rule, f"{rule} in {names}")


def check_columns(columns: Iterable[object], contract: DataContract) -> None:
    """Missing or unexpected columns, found from the header alone: readers call it before they
    build a single row, so a file with 10,000 columns is refused in milliseconds (pandera and the
    per-column cleaning took seconds a chunk, and a chunk that wide can fill the memory)."""
    present = [str(column) for column in columns]
    known = set(present)
    missing = sorted(name for name in contract.columns if name not in known)
    unexpected = sorted(name for name in present if name not in contract.columns)
    violations = [
        Violation(rule, _describe(rule, names, 0, contract), names)
        for rule, names in ((Rule.missing_columns, missing), (Rule.unexpected_columns, unexpected))
        if names
    ]
    if violations:
        raise DatasetRejectedError(violations)


def validate(frame: pd.DataFrame, contract: DataContract) -> pd.DataFrame:
    """The frame typed as the contract says (numeric: float64, categorical: str), or
    DatasetRejectedError with every violation found (only the column ones when the columns are
    wrong: checks on data that does not fit the contract's shape add noise)."""
    check_columns(frame.columns, contract)
    try:
        typed = structure_schema(contract).validate(frame, lazy=True)
        values_schema(contract).validate(typed, lazy=True)
    except SchemaErrors as errors:
        raise DatasetRejectedError(_violations(errors, contract)) from None
    return typed[list(contract.columns)]
