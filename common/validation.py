"""Validating data against its contract with pandera, and the rules a rejected file breaks.

Two passes, because value checks on a column that failed to parse only add noise: first structure
(columns, types, nulls), then values (ranges, categories) on the typed data.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Violation:
    rule: Rule
    detail: str
    columns: list[str] = field(default_factory=list)
    rows: int = 0
    examples: list[str] = field(default_factory=list)

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


def _describe(rule: Rule, columns: list[str], rows: int, contract: DataContract) -> str:
    names = ", ".join(columns)
    descriptions = {
        Rule.missing_columns: f"columns required by the contract are missing: {names}",
        Rule.unexpected_columns: f"columns not in the contract: {names}",
        Rule.wrong_type: f"values that are not numbers in numeric column(s) {names} ({rows} rows)",
        Rule.null_values: f"missing values in non-nullable column(s) {names} ({rows} rows)",
        Rule.out_of_range: f"values outside the contract's range in {names} ({rows} rows)",
        Rule.unknown_category: f"categories not in the contract in {names} ({rows} rows)",
    }
    return descriptions.get(rule, f"{rule} in {names}")


def validate(frame: pd.DataFrame, contract: DataContract) -> pd.DataFrame:
    """The frame typed as the contract says (numeric: float64, categorical: str), or
    DatasetRejectedError with every violation found."""
    try:
        typed = structure_schema(contract).validate(frame, lazy=True)
        values_schema(contract).validate(typed, lazy=True)
    except SchemaErrors as errors:
        raise DatasetRejectedError(_violations(errors, contract)) from None
    return typed[list(contract.columns)]
