"""Request schemas generated from a model's data contract, and the 4xx errors that name the field.

A record is a pydantic-validated TypedDict rather than a BaseModel: validation is about twice as fast
(no instance per record) and a validated record is a plain dict, like the bundle's check records, so
one input builder serves both.

Two validators hold the same rules. pydantic owns them: it gives the JSON schema (OpenAPI, /docs) and
errors that name every bad field. msgspec only accepts: a valid body is decoded by it 2.3x faster
(1,000 records of 20 numbers: 1.46 ms with the dicts, against 3.32 ms; that is most of a linear model's
server time). Whatever msgspec refuses is decided again by pydantic, so a refusal's answer is always
pydantic's; tests/unit/test_request_schemas.py checks that msgspec accepts nothing pydantic refuses,
and that what both accept decodes to the same records.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import msgspec
import numpy as np
import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before Python 3.12

from common.contracts import CategoricalColumn, DataContract

Record = dict[str, Any]
# A batch is an object whose first key is "records" holding an array. A feature's value is never an
# array, so this cannot mistake a single record for a batch, even with a feature named "records".
_BATCH_BODY = re.compile(rb'\A\s*\{\s*"records"\s*:\s*\[')
# One bad batch can break every rule in every record; the first ones are enough to fix a client.
MAX_PROBLEMS = 100
# Records validated in one call, in a worker thread: a millisecond or two, between which the event loop
# can take the interpreter lock back.
CHUNK_RECORDS = 1000
# In order of precedence: a malformed body, then a batch over the limit; any other rule is a 422.
_STATUS_OF_RULE = {"json_invalid": 400, "too_long": 413}
# Models take their numbers as float32 (serving/bundle.py's InputBuilder): a finite JSON number beyond
# this would reach the model as an infinity (a linear model then answers null, a tree some leaf). Every
# numeric feature is bounded by it, so pydantic refuses such a value by field, as any other bound.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_RANGE = "float32_range"


@dataclass(frozen=True)
class Problem:
    field: str
    rule: str
    message: str


class RequestError(Exception):
    """An answer other than the prediction, with `status` and the problems: a client's mistake (4xx),
    or a request over its time budget (503); never a 500."""

    def __init__(self, status: int, problems: list[Problem]) -> None:
        super().__init__(problems[0].message if problems else str(status))
        self.status = status
        self.problems = problems


def field_path(location: tuple[int | str, ...], prefix: str = "") -> str:
    """('records', 3, 'petal_length') -> 'records[3].petal_length'."""
    path = prefix
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _problem(detail: Any, prefix: str) -> Problem:
    rule, message = detail["type"], detail["msg"]
    bound = detail.get("ctx", {}).get("le" if rule == "less_than_equal" else "ge")
    if bound is not None and abs(bound) == FLOAT32_MAX:
        rule = FLOAT32_RANGE
        message = (
            f"beyond float32's range (-{FLOAT32_MAX:.7g} to {FLOAT32_MAX:.7g}), the model's number type: "
            "it would reach the model as an infinity"
        )
    return Problem(field_path(detail["loc"], prefix), rule, message)


def request_error_of(error: ValidationError, prefix: str = "") -> RequestError:
    details = error.errors(include_url=False, include_input=False)
    problems = [_problem(detail, prefix) for detail in details]
    if len(problems) > MAX_PROBLEMS:
        hidden = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], Problem("body", "too_many_problems", f"and {hidden} more")]
    rules = {problem.rule for problem in problems}
    status = next((status for rule, status in _STATUS_OF_RULE.items() if rule in rules), 422)
    return RequestError(status, problems)


def _feature_type(column: Any) -> Any:
    if isinstance(column, CategoricalColumn):
        value_type: Any = Literal[tuple(column.categories)]
    else:
        low = -FLOAT32_MAX if column.min is None else max(column.min, -FLOAT32_MAX)
        high = FLOAT32_MAX if column.max is None else min(column.max, FLOAT32_MAX)
        # Without it, a client generated from the schema (or /docs' "Try it out") would offer the
        # float32 bound itself as the example: a value no model answers sensibly.
        example = None if column.min is not None and column.max is not None else [min(max(0.0, low), high)]
        # JSON's NaN and Infinity tokens parse to floats; allow_inf_nan=False refuses them here.
        value_type = Annotated[float, Field(ge=low, le=high, allow_inf_nan=False, examples=example)]
    return NotRequired[value_type | None] if column.nullable else value_type


def _record_type(contract: DataContract) -> Any:
    fields = {name: _feature_type(contract.columns[name]) for name in contract.features}
    # Strict: "5.1" is not a number and true is not 5.1 (ints still are floats).
    config = ConfigDict(extra="forbid", strict=True, title=f"{contract.model} record")
    # The functional TypedDict form is the only one that takes field names known at run time.
    typed_dict: Any = TypedDict
    return with_config(config)(typed_dict(f"{contract.model}_record", fields))


class _FastRecords:
    """The contract's records as msgspec decodes them from JSON: the same rules as _record_type, as a
    Struct (a TypedDict in msgspec would drop unknown keys rather than refuse them). Every method answers
    None for anything it does not accept, for pydantic to decide. Only for JSON bytes, never for values
    already parsed: msgspec has no rule against NaN, which Python's parser reads (/invocations) and
    which passes any bound, while its JSON parser has no NaN token to read."""

    def __init__(self, contract: DataContract, max_batch: int) -> None:
        # A feature's name need not be an identifier: the Struct's fields are f0, f1... renamed to them.
        fields = [
            (f"f{index}", *self._field(contract.columns[name]))
            for index, name in enumerate(contract.features)
        ]
        renamed = {f"f{index}": name for index, name in enumerate(contract.features)}
        record: Any = msgspec.defstruct(
            f"{contract.model}_fast_record", fields, forbid_unknown_fields=True, rename=renamed, kw_only=True
        )
        many = Annotated[list[record], msgspec.Meta(min_length=1, max_length=max_batch)]
        batch: Any = msgspec.defstruct(
            f"{contract.model}_fast_batch", [("records", many)], forbid_unknown_fields=True
        )
        self._record_decoder = msgspec.json.Decoder(record)
        self._batch_decoder = msgspec.json.Decoder(batch)

    @staticmethod
    def _field(column: Any) -> tuple[Any] | tuple[Any, Any]:
        if isinstance(column, CategoricalColumn):
            value_type: Any = Literal[tuple(column.categories)]
        else:
            low = -FLOAT32_MAX if column.min is None else max(column.min, -FLOAT32_MAX)
            high = FLOAT32_MAX if column.max is None else min(column.max, FLOAT32_MAX)
            # msgspec's JSON parser has no NaN or Infinity tokens; the bounds refuse an overflow to inf.
            value_type = Annotated[float, msgspec.Meta(ge=low, le=high)]
        # UNSET, not None, for an absent value: the record then has no such key, as pydantic's has not.
        return (value_type | None | msgspec.UnsetType, msgspec.UNSET) if column.nullable else (value_type,)

    def batch(self, body: bytes) -> list[Record] | None:
        try:
            records: list[Record] = msgspec.to_builtins(self._batch_decoder.decode(body).records)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        return records

    def record(self, body: bytes) -> Record | None:
        try:
            record: Record = msgspec.to_builtins(self._record_decoder.decode(body))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        return record


@dataclass(frozen=True)
class Decoded:
    """A request's validated records, whether it was a batch, and where its records sit in the body."""

    records: list[Record]
    batch: bool
    location: str  # "records", "instances", "dataframe_split.data", ...; "" for a body that is one record

    def field_of(self, index: int) -> str:
        """The field naming one record, as a validation error names it: `records[3]`, or `body`."""
        return f"{self.location}[{index}]" if self.location else "body"


@dataclass(frozen=True)
class RequestSchemas:
    """The validators for one model's requests (built once per contract, off the request path)."""

    record: TypeAdapter[Record]
    batch: TypeAdapter[dict[str, list[Record]]]
    records: TypeAdapter[list[Record]]
    max_batch: int
    record_json_schema: dict[str, Any]
    fast: _FastRecords

    @classmethod
    def of(cls, contract: DataContract, max_batch: int) -> RequestSchemas:
        record_type = _record_type(contract)
        many = Annotated[list[record_type], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]
        batch_type: Any = TypedDict
        batch = with_config(ConfigDict(extra="forbid", strict=True, title=f"{contract.model} batch"))(
            batch_type(f"{contract.model}_batch", {"records": many})
        )
        record = TypeAdapter(record_type)
        fast = _FastRecords(contract, max_batch)
        return cls(record, TypeAdapter(batch), TypeAdapter(many), max_batch, record.json_schema(), fast)

    def decode_predict_body(self, body: bytes) -> Decoded:
        """The records of a predict body, and whether it was a batch; validated straight from the bytes
        (msgspec's for a valid body, pydantic's for the rest), so errors name the exact field."""
        if _BATCH_BODY.match(body):
            records = self.fast.batch(body)
            if records is not None:
                return Decoded(records, True, "records")
        else:
            record = self.fast.record(body)
            if record is not None:
                return Decoded([record], False, "")
        try:
            if _BATCH_BODY.match(body):
                return Decoded(self.batch.validate_json(body)["records"], True, "records")
            return Decoded([self.record.validate_json(body)], False, "")
        except ValidationError as error:
            raise request_error_of(error) from None

    def decode_predict_body_in_parts(self, body: bytes) -> Decoded:
        """decode_predict_body for a large body, in a worker thread: parsed by orjson, then validated
        CHUNK_RECORDS at a time, so that the thread lets go of the interpreter lock for the event loop
        between parts rather than holding it for the whole batch (pydantic's JSON validation of 10,000
        records is one call of tens of ms). Whatever is not a well-formed batch of valid records (a NaN
        token orjson refuses, a wrong shape, an invalid value) is decoded again by decode_predict_body,
        for the very same answer."""
        if _BATCH_BODY.match(body):
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = None
            if type(payload) is dict and payload.keys() == {"records"}:
                records = self._valid_in_parts(payload["records"])
                if records is not None:
                    return Decoded(records, True, "records")
        return self.decode_predict_body(body)

    def validate_records(self, records: Any, prefix: str) -> list[Record]:
        validated = self._valid_in_parts(records)
        if validated is not None:
            return validated
        try:
            return self.records.validate_python(records)
        except ValidationError as error:
            raise request_error_of(error, prefix) from None

    def _valid_in_parts(self, records: Any) -> list[Record] | None:
        """The records validated CHUNK_RECORDS at a time; None unless every record is valid (the whole
        list is then validated at once, for errors that name each record by its own index)."""
        if type(records) is not list or not 0 < len(records) <= self.max_batch:
            return None
        validated: list[Record] = []
        try:
            for start in range(0, len(records), CHUNK_RECORDS):
                validated += self.records.validate_python(records[start : start + CHUNK_RECORDS])
        except ValidationError:
            return None
        return validated


_cache: dict[tuple[str, str, int], RequestSchemas] = {}
_cache_lock = threading.Lock()


def request_schemas(contract: DataContract, max_batch: int) -> RequestSchemas:
    """Cached per (model, contract hash, max_batch): a new version under the same contract reuses them."""
    key = (contract.model, contract.content_hash, max_batch)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = RequestSchemas.of(contract, max_batch)
        return _cache[key]
