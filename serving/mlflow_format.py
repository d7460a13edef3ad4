"""The scoring formats `mlflow models serve` accepts on /invocations, turned into records:
``dataframe_split`` ({"columns": [...], "data": [[...]]}, optionally "index"), ``dataframe_records``
([{...}]), and ``inputs`` / ``instances`` (a list of records, or a dict of column lists)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from serving.schemas import Decoded, Problem, Record, RequestError, RequestSchemas, request_error_of

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class _DataframeSplit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None


def invocation_records(body: bytes, schemas: RequestSchemas) -> Decoded:
    """Validated records, or a RequestError naming the field (`dataframe_split.data[3].petal_length`)."""
    try:
        # Python's parser reads NaN and Infinity; the record schema then refuses them by field.
        payload = json.loads(body)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise RequestError(400, [Problem("body", "json_invalid", f"Invalid JSON: {error}")]) from None
    except RecursionError:  # a body of ~1,000 nested arrays reaches the interpreter's stack limit
        message = "Invalid JSON: nested too deeply"
        raise RequestError(400, [Problem("body", "json_invalid", message)]) from None
    keys = sorted(payload) if isinstance(payload, dict) else []
    if len(keys) != 1 or keys[0] not in FORMATS:
        expected = ", ".join(FORMATS)
        message = f"expected an object with exactly one of {expected}; got keys {keys}"
        raise RequestError(422, [Problem("body", "unknown_format", message)])
    key = keys[0]
    if key == "dataframe_split":
        location, rows = "dataframe_split.data", _split_rows(payload[key])
    else:
        location, rows = key, _rows(payload[key], key)
    return Decoded(schemas.validate_records(rows, location), True, location)


def _split_rows(value: Any) -> list[Record]:
    try:
        frame = _DataframeSplit.model_validate(value)
    except ValidationError as error:
        raise request_error_of(error, "dataframe_split") from None
    for position, row in enumerate(frame.data):
        if len(row) != len(frame.columns):
            message = f"{len(row)} values for {len(frame.columns)} columns"
            raise RequestError(422, [Problem(f"dataframe_split.data[{position}]", "row_length", message)])
    return [dict(zip(frame.columns, row, strict=True)) for row in frame.data]


def _rows(value: Any, key: str) -> Any:
    """A dict of column lists becomes records; anything else is validated as it is."""
    if isinstance(value, dict) and value and all(isinstance(column, list) for column in value.values()):
        lengths = {name: len(column) for name, column in value.items()}
        if len(set(lengths.values())) > 1:
            raise RequestError(
                422, [Problem(key, "column_lengths", f"columns of different lengths: {lengths}")]
            )
        names = list(value)
        return [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)]
    return value
