"""The numeric batch check (serving/schemas.py NumericBatch) accepts only what the record schema
accepts: whatever hypothesis throws at both, a batch the fast check passes is one pydantic passes
with the same values, and the answer to a refused one is pydantic's, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.contracts import parse_contract
from serving.schemas import RequestError, RequestSchemas
from tests import datasets

CONTRACT = parse_contract(datasets.contract_yaml("iris", "iris"))
SCHEMAS = RequestSchemas.of(CONTRACT, max_batch=50)
FEATURES = CONTRACT.features

VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just([1.0]),
    st.just({"x": 1}),
    st.sampled_from([1e39, -1e39, 3.5e38, 0.0, -0.0, 5.1]),
)


def _records() -> st.SearchStrategy[list[dict[str, Any]]]:
    keys = st.sampled_from([*FEATURES, "extra"])
    record = st.one_of(
        st.fixed_dictionaries({name: VALUES for name in FEATURES}),
        st.dictionaries(keys, VALUES, max_size=6),
    )
    return st.lists(record, min_size=0, max_size=4)


def _pydantic(body: bytes) -> list[dict[str, Any]] | None:
    try:
        return list(SCHEMAS.batch.validate_json(body)["records"])
    except Exception:  # any refusal, as the comparison needs
        return None


@settings(max_examples=300, deadline=None)
@given(records=_records())
def test_the_fast_check_passes_only_what_the_schema_passes(records: list[dict[str, Any]]) -> None:
    assert SCHEMAS.numeric_batch is not None
    body = json.dumps({"records": records}).encode()

    passed = SCHEMAS.numeric_batch.records(body, SCHEMAS.max_batch)

    if passed is not None:
        validated = _pydantic(body)
        assert validated is not None, records
        assert [[float(record[name]) for name in FEATURES] for record in passed] == [
            [record[name] for name in FEATURES] for record in validated
        ]


@pytest.mark.parametrize(
    "bad",
    [
        {"sepal_length": True},
        {"sepal_length": "5.1"},
        {"sepal_length": 1e39},
        {"sepal_length": None},
        {"extra": 1.0},
    ],
)
def test_a_batch_the_fast_check_refuses_is_answered_by_the_schema_naming_the_field(
    bad: dict[str, Any],
) -> None:
    good = {name: 1.0 for name in FEATURES}
    body = json.dumps({"records": [good, {**good, **bad}]}).encode()

    with pytest.raises(RequestError) as refused:
        SCHEMAS.decode_predict_body(body)

    assert refused.value.problems[0].field.startswith("records[1]")


def test_a_valid_numeric_batch_takes_the_fast_check() -> None:
    good = [{name: float(index) for name in FEATURES} for index in range(3)]
    body = json.dumps({"records": good}).encode()
    assert SCHEMAS.numeric_batch is not None
    assert SCHEMAS.numeric_batch.records(body, SCHEMAS.max_batch) == good
    assert SCHEMAS.decode_predict_body(body).records == good
