"""Ingest reads a CSV twice as fast with its numbers parsed by the C parser; the text reader stays the
judge. Whatever a file holds, the fast pass must accept exactly what the text reader accepts, store the
same doubles, and leave every report to the text reader."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import ingest
from common.contracts import DataFormat, parse_contract
from common.validation import DatasetRejectedError

CONTRACT = parse_contract(
    b"""
model: readings
task: regression
target: y
columns:
  bounded: {type: numeric, min: -5, max: 1000}
  free: {type: numeric, nullable: true}
  kind: {type: categorical, categories: [a, b], nullable: true}
  y: {type: numeric}
limits: {min_rows: 1}
"""
)

# Spellings of numbers, of almost-numbers and of missing values that the two readers might take
# differently: Python's float() reads '1_000', 'nan' and Arabic-Indic digits, the C parser does not.
TRICKY_CELLS = [
    "1",
    "-2.5",
    " 3 ",
    "\t4",
    "1e3",
    "1E-3",
    ".5",
    "5.",
    "+7",
    "-0",
    "1e400",
    "inf",
    "-Infinity",
    "nan",
    "NaN",
    "1_000",
    "١٢",
    "0x10",
    "1.5e",
    "",
    "NA",
    "NULL",
    "abc",
    "1,5",
    '"2"',
    "0.1000000000000000055511151231257827",
    "999.99999999999999999",
    "1000.0000000000001",
]
in_range = st.floats(min_value=-5, max_value=1000).map(repr) | st.integers(-5, 1000).map(str)
any_number = st.floats(allow_nan=False, allow_infinity=False).map(repr)
valid_row = st.tuples(in_range, any_number | st.just(""), st.sampled_from(["a", "b", " a", ""]), any_number)


@st.composite
def rows(draw: st.DrawFn) -> list[tuple[str, ...]]:
    """Valid rows, with up to two cells replaced by tricky ones: a file wholly of tricky cells is
    rejected by both readers, and would leave the fast reader's acceptances untested."""
    records = [list(row) for row in draw(st.lists(valid_row, min_size=1, max_size=12))]
    for _ in range(draw(st.integers(0, 2))):
        row, column = draw(st.integers(0, len(records) - 1)), draw(st.integers(0, 3))
        records[row][column] = draw(st.sampled_from(TRICKY_CELLS))
    return [tuple(record) for record in records]


def _outcome(convert: Any, text: str) -> tuple[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source.csv"
        source.write_text(text, encoding="utf-8")
        downloaded = ingest.DownloadedObject(None, DataFormat.csv, source, "hash")  # type: ignore[arg-type]
        try:
            converted = convert(downloaded, CONTRACT, Path(scratch) / "out.parquet", 5)
        except DatasetRejectedError as rejected:
            return "rejected", [violation.as_dict() for violation in rejected.violations]
        stored = pd.read_parquet(converted.path)
        # Bit for bit: -0.0 and 0.0, or two doubles a rounding apart, must not pass for equal.
        as_bits = {
            name: stored[name].to_numpy().view("int64").tolist()
            if stored[name].dtype == "float64"
            else stored[name].tolist()
            for name in stored.columns
        }
        return "accepted", (as_bits, converted.rows_read, converted.rows_written, converted.duplicate_rows)


def _text_only(source: Any, contract: Any, output: Path, chunk_rows: int) -> Any:
    return ingest._convert(source, contract, output, chunk_rows, numbers=False)


def _csv(records: list[tuple[str, ...]]) -> str:
    return "bounded,free,kind,y\n" + "".join(",".join(record) + "\n" for record in records)


# Each example converts a file twice (about 40 ms): 120 keep the test near 5 s.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_the_fast_reader_accepts_stores_and_reports_exactly_what_the_text_reader_does(
    records: list[tuple[str, ...]],
) -> None:
    text = _csv(records)
    assert _outcome(ingest.convert, text) == _outcome(_text_only, text)


def test_a_clean_file_is_read_once_with_numbers_and_a_file_with_text_again_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: list[bool] = []
    real = ingest._convert

    def counting(*args: Any, numbers: bool) -> Any:
        passes.append(numbers)
        return real(*args, numbers=numbers)

    monkeypatch.setattr(ingest, "_convert", counting)
    kind, _ = _outcome(ingest.convert, _csv([("1", "2", "a", "3"), ("4", "", "b", "5")]))
    assert (kind, passes) == ("accepted", [True])

    passes.clear()
    kind, stored = _outcome(ingest.convert, _csv([("1_000", "2", "a", "3")]))
    assert (kind, passes) == ("accepted", [True, False])  # Python's float() reads 1_000; the C parser not
    assert np.array(stored[0]["bounded"], dtype="int64").view("float64").tolist() == [1000.0]

    passes.clear()
    kind, report = _outcome(ingest.convert, _csv([("many", "2", "a", "3")]))
    assert (kind, passes) == ("rejected", [True, False])
    assert report[0]["rule"] == "wrong_type" and report[0]["examples"] == ["many"]
