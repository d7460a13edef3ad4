from __future__ import annotations

import pandas as pd
import pytest

from common.contracts import DataContract, parse_contract
from common.validation import DatasetRejectedError, Rule, validate
from tests import datasets


@pytest.fixture
def houses() -> DataContract:
    return parse_contract(datasets.contract_yaml("house-prices", "houses"))


def _strings(frame: pd.DataFrame) -> pd.DataFrame:
    """As the CSV reader hands chunks over: strings, with NA as missing."""
    return frame.astype(object).where(frame.notna(), None).astype("str").replace("None", None)


def _rules(frame: pd.DataFrame, contract: DataContract) -> list[Rule]:
    with pytest.raises(DatasetRejectedError) as rejected:
        validate(frame, contract)
    return [violation.rule for violation in rejected.value.violations]


def test_valid_data_comes_back_typed(houses: DataContract) -> None:
    frame = datasets.house_frame(50)
    typed = validate(_strings(frame), houses)
    assert typed["area_m2"].dtype == "float64"
    assert typed["heating"].isna().sum() == frame["heating"].isna().sum()


def test_missing_and_unexpected_columns_are_both_named(houses: DataContract) -> None:
    frame = datasets.house_frame(20).drop(columns=["rooms"]).assign(garden="yes")
    with pytest.raises(DatasetRejectedError) as rejected:
        validate(_strings(frame), houses)
    by_rule = {violation.rule: violation for violation in rejected.value.violations}
    assert by_rule[Rule.missing_columns].columns == ["rooms"]
    assert by_rule[Rule.unexpected_columns].columns == ["garden"]


def test_text_in_a_numeric_column_is_a_wrong_type(houses: DataContract) -> None:
    frame = _strings(datasets.house_frame(20))
    frame.loc[[2, 4], "area_m2"] = "big"
    assert _rules(frame, houses) == [Rule.wrong_type]


def test_a_null_where_the_contract_forbids_it(houses: DataContract) -> None:
    frame = _strings(datasets.house_frame(20))
    frame.loc[3, "district"] = None
    assert _rules(frame, houses) == [Rule.null_values]


def test_ranges_and_categories_are_checked_on_typed_values(houses: DataContract) -> None:
    frame = _strings(datasets.house_frame(20))
    frame.loc[1, "area_m2"] = "5"
    frame.loc[[2, 3], "district"] = "atlantis"
    with pytest.raises(DatasetRejectedError) as rejected:
        validate(frame, houses)
    violations = {violation.rule: violation for violation in rejected.value.violations}
    assert violations[Rule.out_of_range].rows == 1
    assert violations[Rule.unknown_category].rows == 2
    assert violations[Rule.unknown_category].examples == ["atlantis"]
