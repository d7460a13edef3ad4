"""serving/schemas.py's two validators: msgspec accepts valid bodies fast, pydantic decides the rest. A
request's answer must not depend on which one ran, so msgspec must accept nothing pydantic refuses,
and decode what both accept to the very same records (values and their types: capture writes them)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from common.contracts import DataContract
from serving.schemas import FLOAT32_MAX, RequestError, request_schemas

MAX_BATCH = 4
CONTRACT = DataContract.model_validate(
    {
        "model": "schemas-equivalence",
        "target": "label",
        "task": "classification",
        "columns": {
            "plain": {"type": "numeric"},
            "bounded": {"type": "numeric", "min": 0, "max": 10.5},
            "maybe": {"type": "numeric", "nullable": True},
            "petal length (cm)": {"type": "numeric"},
            "colour": {"type": "categorical", "categories": ["red", "green", ""]},
            "size": {"type": "categorical", "categories": ["S", "M"], "nullable": True},
            "label": {"type": "categorical", "categories": ["a", "b"]},
        },
    }
)
SCHEMAS = request_schemas(CONTRACT, MAX_BATCH)
FEATURES = list(CONTRACT.features)

# Values near every rule's edge: the bounds, float32's range, ints for floats, bools, strings of
# numbers, categories and their near misses, nulls, nested values.
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0, -0.0, 10.5, 10.5000001, -1e-300, FLOAT32_MAX, -FLOAT32_MAX, 3.4028236e38, 1e39, 1e308]
    ),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
)
values = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.sampled_from(["red", "green", "", "S", "M", "Red", "5.1", "NaN"]),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
records = st.dictionaries(
    st.sampled_from([*FEATURES, "label", "extra", "records"]), values, max_size=len(FEATURES) + 2
)


def valid_record() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "plain": numbers.filter(lambda value: abs(value) <= FLOAT32_MAX),
            "bounded": st.floats(min_value=0, max_value=10.5) | st.integers(0, 10),
            "petal length (cm)": st.floats(-1e6, 1e6),
            "colour": st.sampled_from(["red", "green", ""]),
        },
        optional={"maybe": st.none() | st.floats(-1, 1), "size": st.sampled_from(["S", "M", None])},
    )


@st.composite
def nearly_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with one thing changed: a value, a key added, or a key taken away."""
    record = draw(valid_record())
    change = draw(st.sampled_from(["value", "add", "remove"]))
    if change == "remove":
        record.pop(draw(st.sampled_from(sorted(record))))
    else:
        key = (
            draw(st.sampled_from(FEATURES))
            if change == "value"
            else draw(st.sampled_from(["extra", "label"]))
        )
        record[key] = draw(values)
    return record


any_record = st.one_of(valid_record(), nearly_valid(), records)


def body_of(document: Any) -> bytes:
    # json, not orjson: it writes NaN and Infinity tokens, which only some parsers take.
    return json.dumps(document).encode()


def pydantic_answer(body: bytes) -> Any:
    """The answer with pydantic alone, as before msgspec: the records, or the refusal's problems."""
    try:
        if body.lstrip().startswith(b'{"records"'):
            return ("batch", SCHEMAS.batch.validate_json(body)["records"])
        return ("record", [SCHEMAS.record.validate_json(body)])
    except ValidationError:
        return "refused"


def answer(body: bytes) -> Any:
    try:
        decoded = SCHEMAS.decode_predict_body(body)
    except RequestError:
        return "refused"
    return ("batch" if decoded.batch else "record", decoded.records)


def typed(answer: Any) -> Any:
    """Equal values of different types (5 and 5.0) differ here, as they do in a capture's JSON."""
    return answer if answer == "refused" else (answer[0], orjson.dumps(answer[1]))


wide = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@wide
@given(any_record)
def test_a_record_is_answered_as_pydantic_alone_answers_it(record: dict[str, Any]) -> None:
    body = body_of(record)
    assert typed(answer(body)) == typed(pydantic_answer(body))


@wide
@given(st.lists(any_record, max_size=MAX_BATCH + 1), st.booleans())
def test_a_batch_is_answered_as_pydantic_alone_answers_it(batch: list[dict[str, Any]], extra: bool) -> None:
    document: dict[str, Any] = {"records": batch, **({"extra": 1} if extra else {})}
    body = body_of(document)
    assert typed(answer(body)) == typed(pydantic_answer(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"plain": NaN, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": -Infinity, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": 1e400, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": Infinity, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": 1e39, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": 1, "bounded": 1, "petal length (cm)": 1, "colour": "red", "extra": 1}',
        b'{"plain": true, "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": "1", "bounded": 1, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": 1, "bounded": 11, "petal length (cm)": 1, "colour": "red"}',
        b'{"plain": 1, "bounded": 1, "petal length (cm)": 1, "colour": "blue"}',
        b'{"plain": 1, "bounded": 1, "petal length (cm)": 1}',
        b'{"records": []}',
        b'{"records": [{"plain": 1, "bounded": 1, "petal length (cm)": 1, "colour": "red"}], "x": 1}',
        b'{"plain": 1, "bounded": 1, "petal length (cm)": 1, "colour": "red"} trailing',
    ],
)
def test_what_pydantic_refuses_is_refused_with_its_problems(body: bytes) -> None:
    assert pydantic_answer(body) == "refused"
    assert SCHEMAS.fast.record(body) is None and SCHEMAS.fast.batch(body) is None
    with pytest.raises(RequestError) as refused:
        SCHEMAS.decode_predict_body(body)
    assert refused.value.problems, "a refusal names what is wrong"


def test_a_valid_batch_is_decoded_by_msgspec() -> None:
    """The fast path is taken at all: without it the 2.3x is lost, silently."""
    record = {"plain": 1, "bounded": 2.5, "petal length (cm)": -3, "colour": "", "size": None}
    body = orjson.dumps({"records": [record, {**record, "maybe": 0.5}]})
    assert SCHEMAS.fast.batch(body) == [
        {"plain": 1.0, "bounded": 2.5, "petal length (cm)": -3.0, "colour": "", "size": None},
        {"plain": 1.0, "bounded": 2.5, "petal length (cm)": -3.0, "colour": "", "size": None, "maybe": 0.5},
    ]
