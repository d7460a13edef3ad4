"""Quarantine reports stay small and inert whatever the file holds (reliability issue, hostile files):
no live spreadsheet formula, no list of 10,000 columns, no 100 MB cell."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from common.contracts import parse_contract
from common.validation import (
    REPORT_LIST_LIMIT,
    DatasetRejectedError,
    Rule,
    Violation,
    check_columns,
    report_text,
    validate,
)
from tests import datasets

IRIS = parse_contract(datasets.contract_yaml("iris", "iris"))
INJECTIONS = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(1)", "-2+3", "\t=1+2", "\r=1+2"]


def _strings(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(str)


def _violations(frame: pd.DataFrame) -> dict[Rule, Violation]:
    with pytest.raises(DatasetRejectedError) as rejected:
        validate(frame, IRIS)
    return {violation.rule: violation for violation in rejected.value.violations}


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_value_that_a_spreadsheet_would_evaluate_is_quoted(value: str) -> None:
    assert report_text(value) == f"'{value}"


@pytest.mark.parametrize("value", ["-2", "-2.5", "+1", "-1e5", "setosa", "a=b", "'=already"])
def test_numbers_and_plain_text_are_left_as_they_are(value: str) -> None:
    assert report_text(value) == value


def test_a_long_value_is_clipped_and_says_how_long_it_was() -> None:
    shown = report_text("x" * 100_000_000)
    assert len(shown) < 300
    assert shown.endswith("(100000000 characters)")


def test_formulas_in_a_categorical_column_reach_the_report_inert_and_the_data_unchanged() -> None:
    # GIVEN formulas where the categories go, and -2 (a number, out of range) in a numeric column
    frame = _strings(datasets.iris_frame(30))
    frame.loc[: len(INJECTIONS) - 1, "species"] = INJECTIONS
    frame.loc[10, "petal_width"] = "-2"

    # WHEN it is validated
    violations = _violations(frame)

    # THEN every example of an unknown category is quoted, the number is shown as a number
    examples = violations[Rule.unknown_category].examples
    assert len(examples) == 5
    assert all(example.startswith("'") for example in examples)
    assert examples[0] == "'=cmd|' /C calc'!A0"
    assert violations[Rule.out_of_range].examples == ["-2.0"]
    # AND the frame handed in is the same data: reports are neutralised, never the data
    assert frame.loc[0, "species"] == "=cmd|' /C calc'!A0"


def test_ten_thousand_unknown_columns_give_a_short_report() -> None:
    names = [*IRIS.columns, *(f"extra_{index}" for index in range(9_995))]

    with pytest.raises(DatasetRejectedError) as rejected:
        check_columns(names, IRIS)

    [violation] = rejected.value.violations
    assert violation.rule is Rule.unexpected_columns
    assert len(violation.columns) == REPORT_LIST_LIMIT
    assert violation.columns_omitted == 9_995 - REPORT_LIST_LIMIT
    assert violation.detail.endswith(f"and {9_995 - REPORT_LIST_LIMIT} more")
    assert len(json.dumps(violation.as_dict())) < 2_000
    assert len(str(rejected.value)) < 2_000


def test_an_unexpected_column_named_like_a_formula_is_quoted() -> None:
    with pytest.raises(DatasetRejectedError) as rejected:
        check_columns([*IRIS.columns, '=HYPERLINK("http://x")'], IRIS)
    assert rejected.value.violations[0].columns == ['\'=HYPERLINK("http://x")']


def test_a_huge_column_name_is_clipped_in_the_columns_and_the_detail() -> None:
    with pytest.raises(DatasetRejectedError) as rejected:
        check_columns([*IRIS.columns, "y" * 1_000_000], IRIS)
    violation = rejected.value.violations[0]
    assert len(violation.columns[0]) < 300
    assert len(violation.detail) < 2_500


def test_missing_and_unexpected_columns_come_before_any_value_check() -> None:
    # A column missing and a value out of range: the report is about the shape, not the values.
    frame = _strings(datasets.iris_frame(30)).drop(columns=["sepal_width"])
    frame.loc[0, "petal_width"] = "99"
    assert list(_violations(frame)) == [Rule.missing_columns]
