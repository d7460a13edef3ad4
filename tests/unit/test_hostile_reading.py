"""Reading hostile files in bounded time and memory (reliability issue, hostile files): bytes that
are not UTF-8, a line with no end, thousands of columns, a Parquet file of another schema, a gzip
bomb. Each is refused with a rule and a report that says where."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO, cast

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import tabular
from common.contracts import DataFormat, parse_contract
from common.validation import DatasetRejectedError, Rule
from tests import datasets

IRIS = parse_contract(datasets.contract_yaml("iris", "iris"))
HEADER = b"sepal_length,sepal_width,petal_length,petal_width,species\n"


class TrickleReader(io.RawIOBase):
    """Hands out a few bytes a read, so multi-byte characters and line ends fall across reads."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data, self._size, self._at = data, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self._data[self._at : self._at + min(self._size, len(buffer))]
        self._at += len(piece)
        buffer[: len(piece)] = piece
        return len(piece)


class CountingReader(io.RawIOBase):
    """Passes bytes through and counts them: what a reader read is its work, whatever the clock says."""

    def __init__(self, source: bytes | BinaryIO, reads: list[int] | None = None) -> None:
        self._source = io.BytesIO(source) if isinstance(source, bytes) else source
        self.reads = [] if reads is None else reads

    @property
    def served(self) -> int:
        return sum(self.reads)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self._source.read(len(buffer))
        buffer[: len(piece)] = piece
        self.reads.append(len(piece))
        return len(piece)

    def read(self, size: int = -1) -> bytes:
        piece = self._source.read(size)
        self.reads.append(len(piece))
        return piece


def _rejected(data: bytes) -> DatasetRejectedError:
    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.csv_chunks(io.BytesIO(data), IRIS))
    return rejected.value


def test_a_latin_1_byte_is_unreadable_and_the_report_names_its_line_and_offset() -> None:
    body = datasets.to_csv(datasets.iris_frame(3000))
    at = body.index(b"setosa", len(body) // 2)
    line = body[:at].count(b"\n") + 1

    rejected = _rejected(body[:at] + "café".encode("latin-1") + body[at + 6 :])

    assert rejected.rule is Rule.unreadable
    assert str(rejected) == (
        f"unreadable: not UTF-8 text: byte 0xe9 at line {line} (byte {at + 3} of the CSV text); "
        "the contract reads CSV as UTF-8"
    )


def test_random_binary_is_unreadable_at_its_first_byte() -> None:
    rejected = _rejected(bytes(range(128, 256)) * 100)
    assert rejected.rule is Rule.unreadable
    assert "byte 0x80 at line 1 (byte 0 of the CSV text)" in str(rejected)


def test_utf_8_split_across_reads_is_read_and_a_cut_character_at_the_end_is_not() -> None:
    whole = "é,ü\n€,😀\n".encode()
    guard = tabular.TextGuard(cast(BinaryIO, TrickleReader(whole, 1)))
    assert io.BufferedReader(guard, buffer_size=1).read() == whole

    cut = tabular.TextGuard(cast(BinaryIO, TrickleReader(whole[:-2], 3)))
    with pytest.raises(DatasetRejectedError, match="byte 0xf0 at line 2"):
        io.BufferedReader(cut).read()


def test_a_100_mb_line_is_refused_after_a_megabyte() -> None:
    # GIVEN a stream that would hand out 100 MB without a newline, generated as it is read
    class Endless(io.RawIOBase):
        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            size = min(len(buffer), 100 * 2**20 - self.served)
            buffer[:size] = b"x" * size
            self.served += size
            return size

    source = Endless()

    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.csv_chunks(io.BufferedReader(source), IRIS))

    assert rejected.value.rule is Rule.unreadable
    assert str(rejected.value) == (
        f"unreadable: line 1 is longer than {tabular.MAX_LINE_BYTES} bytes; no table row is that long"
    )
    assert source.served < 4 * tabular.MAX_LINE_BYTES  # read a few MB of it, not 100


def test_a_long_line_further_down_is_named() -> None:
    rows = datasets.to_csv(datasets.iris_frame(10))
    rejected = _rejected(rows + b"5.1,3.5,1.4,0.2," + b"s" * (2 * tabular.MAX_LINE_BYTES) + b"\n")
    assert "line 12 is longer than" in str(rejected)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_a_file_of_many_short_lines_passes_whatever_its_line_ends(newline: bytes) -> None:
    body = datasets.to_csv(datasets.iris_frame(200_000)).replace(b"\n", newline)
    assert len(body) > 4 * tabular.MAX_LINE_BYTES
    assert sum(len(chunk) for chunk in tabular.csv_chunks(io.BytesIO(body), IRIS)) == 200_000


def test_a_header_with_a_byte_order_mark_or_quotes_matches_the_contract() -> None:
    body = b"\xef\xbb\xbf" + datasets.to_csv(datasets.iris_frame(10)).replace(b"species", b'"species"', 1)
    assert sum(len(chunk) for chunk in tabular.csv_chunks(io.BytesIO(body), IRIS)) == 10


def test_a_header_of_120_000_columns_is_refused_before_any_row_is_built() -> None:
    # The parser took 15 s to build one row that wide; the header alone decides.
    header = b",".join(b"c%d" % index for index in range(120_000)) + b"\n"
    body = header + (b"1," * 119_999 + b"1\n") * 50
    stream = CountingReader(body)

    with pytest.raises(DatasetRejectedError) as refused:
        list(tabular.csv_chunks(io.BufferedReader(stream), IRIS))
    rejected = refused.value

    # The header and at most a buffer or two past it were read: no row of the 12 MB was parsed.
    assert stream.served < len(header) + 2 * tabular.MAX_LINE_BYTES < len(body)
    assert [violation.rule for violation in rejected.violations] == [
        Rule.missing_columns,
        Rule.unexpected_columns,
    ]
    assert rejected.violations[1].columns_omitted == 120_000 - len(rejected.violations[1].columns)


def _parquet(frame: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    path.write_bytes(datasets.to_parquet(frame))
    return path


def test_a_parquet_file_with_other_column_names_is_refused_naming_them(tmp_path: Path) -> None:
    frame = datasets.iris_frame(30).rename(columns={"sepal_length": "sepalLength", "species": "label"})
    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.parquet_chunks(_parquet(frame, tmp_path), IRIS))
    by_rule = {violation.rule: violation.columns for violation in rejected.value.violations}
    assert by_rule == {
        Rule.missing_columns: ["sepal_length", "species"],
        Rule.unexpected_columns: ["label", "sepalLength"],
    }


def test_a_parquet_file_of_millions_of_equal_rows_is_refused_once_decoded_past_the_limit(
    tmp_path: Path,
) -> None:
    # GIVEN 5 million equal rows, which run-length encoding packs into a few hundred KB
    path = tmp_path / "bomb.parquet"
    row = datasets.iris_frame(1)
    # One row repeated by index, not 100,000 frames concatenated: pyarrow writes this in 0.3 s, and the
    # concatenation's columns in 8.6 s (35 s inside the loaded suite).
    table = pa.Table.from_pandas(row.loc[row.index.repeat(100_000)], preserve_index=False)
    with pq.ParquetWriter(path, table.schema) as writer:
        for _ in range(50):
            writer.write_table(table)
    assert path.stat().st_size < 2**20
    limited = parse_contract(datasets.contract_yaml("iris", "iris", max_file_bytes=16 * 2**20))
    decoded = 0

    with pytest.raises(DatasetRejectedError) as rejected:
        for chunk in tabular.parquet_chunks(path, limited):
            decoded += len(chunk)

    assert rejected.value.rule is Rule.decompressed_too_large
    assert str(rejected.value) == f"decompressed_too_large: more than {16 * 2**20} bytes once decoded"
    # Refused once 16 MiB were decoded: a small part of the 5 million rows, not all of them.
    assert decoded < 1_000_000


def test_gzip_that_inflates_past_the_limit_is_refused_in_one_counting_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(datasets.gzip_bomb(64 * 2**20))
    inflated: list[int] = []
    real_decompressed = tabular.decompressed

    def counting(stream: BinaryIO, data_format: DataFormat, limit: int) -> CountingReader:
        return CountingReader(real_decompressed(stream, data_format, limit), inflated)

    monkeypatch.setattr(tabular, "decompressed", counting)
    with pytest.raises(DatasetRejectedError) as rejected:
        tabular.check_inflated_size(path, DataFormat.csv_gz, limit=32 * 2**20)
    assert rejected.value.rule is Rule.decompressed_too_large
    # It stopped inflating at the limit: 32 of the 64 MiB, in one pass.
    assert sum(inflated) <= 32 * 2**20


def test_gzip_within_the_limit_and_other_formats_pass_the_counting_pass(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    body = datasets.to_csv(datasets.iris_frame(100))
    path.write_bytes(gzip.compress(body))
    # Exactly at the limit passes (no exception), one byte under it does not: the whole file counts.
    tabular.check_inflated_size(path, DataFormat.csv_gz, limit=len(body))
    with pytest.raises(DatasetRejectedError) as rejected:
        tabular.check_inflated_size(path, DataFormat.csv_gz, limit=len(body) - 1)
    assert rejected.value.rule is Rule.decompressed_too_large
    # Other formats are not counted here (their size check is the object's own size).
    tabular.check_inflated_size(path, DataFormat.csv, limit=1)


def test_a_truncated_gzip_is_unreadable_in_the_counting_pass(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    whole = gzip.compress(datasets.to_csv(datasets.iris_frame(2000)))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetRejectedError) as rejected:
        tabular.check_inflated_size(path, DataFormat.csv_gz, limit=2**30)
    assert rejected.value.rule is Rule.unreadable
