"""Reading a data file in bounded memory, and the pure preprocessing steps applied to each chunk.

Everything here works on streams and DataFrames; where the bytes come from is the caller's business.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.contracts import DataContract, DataFormat, NumericColumn
from common.validation import Rule, check_columns, reject

CHUNK_ROWS = 100_000
# The parser holds a whole line in memory, several times over (its tokens, then Python strings): a
# 100 MB line without a newline took 2.7 GB. No contract's row comes near a megabyte.
MAX_LINE_BYTES = 1 << 20


class MeteredReader(io.RawIOBase):
    """Passes bytes through while counting them, and stops the read once more than `limit` bytes
    have come through, so a gzip bomb is stopped while it inflates."""

    def __init__(self, inner: BinaryIO, limit: int, rule: Rule) -> None:
        self.inner = inner
        self.limit = limit
        self.rule = rule
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.bytes_read += len(data)
        if self.bytes_read > self.limit:
            raise reject(self.rule, f"more than {self.limit} bytes ({self.rule.value.replace('_', ' ')})")
        buffer[: len(data)] = data
        return len(data)


def decompressed(stream: BinaryIO, data_format: DataFormat, limit: int) -> BinaryIO:
    """The file's plain bytes, limited to `limit` once decompressed."""
    if data_format is DataFormat.csv_gz:
        inflating = gzip.GzipFile(fileobj=stream, mode="rb")
        return io.BufferedReader(MeteredReader(inflating, limit, Rule.decompressed_too_large))  # type: ignore[arg-type]
    return stream


def check_inflated_size(path: Path, data_format: DataFormat, limit: int) -> None:
    """Inflate a .csv.gz once, only counting, before it is parsed: a bomb of well-formed rows is
    then refused in about a second, where parsing it up to a 256 MiB limit took a minute, longer
    than a short Lambda timeout (retried until the dead-letter queue)."""
    if data_format is not DataFormat.csv_gz:
        return
    try:
        with path.open("rb") as raw:
            plain = decompressed(raw, data_format, limit)
            while plain.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise reject(Rule.unreadable, f"not a readable gzip file: {error}") from None


_LINE_END = re.compile(rb"[\r\n]")


class TextGuard(io.RawIOBase):
    """Passes a CSV's bytes through, stopping at the first line longer than `max_line` bytes and at
    the first byte that is not UTF-8, and says where: the parser's own errors give a position in
    its buffer, of no use to whoever has to fix the file. Keeps the header line on the way."""

    def __init__(self, inner: BinaryIO, max_line: int = MAX_LINE_BYTES) -> None:
        self.inner = inner
        self.max_line = max_line
        self.offset = 0  # bytes passed so far
        self.line = 1  # the line the next byte belongs to
        self.line_bytes = 0  # bytes of that line passed so far
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._head = b""  # the first bytes, until they hold a line that is not blank

    def readable(self) -> bool:
        return True

    def header(self, delimiter: str) -> list[str]:
        """The column names, as far as the bytes passed so far tell them (the parser reads the whole
        header line before it builds anything)."""
        line = _LINE_END.split(self._head.lstrip(b"\r\n"), maxsplit=1)[0]
        return next(csv.reader([line.decode("utf-8-sig", errors="replace")], delimiter=delimiter), [])

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self._check_utf8(data)
        if len(self._head) <= self.max_line and not _LINE_END.search(self._head.lstrip(b"\r\n")):
            self._head += data[: self.max_line + 1]
        # Pieces no longer than a line may be: a line that ends inside one cannot be too long.
        for start in range(0, len(data), self.max_line):
            self._check_lines(data[start : start + self.max_line])
        self.offset += len(data)
        buffer[: len(data)] = data
        return len(data)

    def _check_utf8(self, data: bytes) -> None:
        pending = len(self._utf8.getstate()[0])
        try:
            self._utf8.decode(data, final=not data)
        except UnicodeDecodeError as error:
            at = self.offset - pending + error.start
            line = self.line + data[: max(0, error.start - pending)].count(b"\n")
            bad = error.object[error.start]
            raise reject(
                Rule.unreadable,
                f"not UTF-8 text: byte 0x{bad:02x} at line {line} (byte {at} of the CSV text); "
                "the contract reads CSV as UTF-8",
            ) from None

    def _check_lines(self, piece: bytes) -> None:
        first = _LINE_END.search(piece)
        through = len(piece) if first is None else first.start()
        if self.line_bytes + through > self.max_line:
            raise reject(
                Rule.unreadable,
                f"line {self.line} is longer than {self.max_line} bytes; no table row is that long",
            )
        if first is None:
            self.line_bytes += len(piece)
        else:
            self.line_bytes = len(piece) - max(piece.rfind(b"\n"), piece.rfind(b"\r")) - 1
        self.line += piece.count(b"\n")


_UNREADABLE = (pd.errors.ParserError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error, OSError)


def csv_chunks(
    stream: BinaryIO, contract: DataContract, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The CSV as string columns, chunk by chunk; typing is validation's job. The header is checked
    against the contract before any row is built: the parser takes seconds a chunk on a file with
    thousands of columns (15 s for one row of 120,000), and such a chunk can fill the memory."""
    guard = TextGuard(stream)
    try:
        reader = pd.read_csv(
            io.BufferedReader(guard),
            dtype=str,
            keep_default_na=False,
            na_values=contract.limits.na_values,
            sep=contract.limits.delimiter,
            chunksize=chunk_rows,
            encoding="utf-8",
            engine="c",
        )
        with reader:
            check_columns(guard.header(contract.limits.delimiter), contract)
            yield from reader
    except pd.errors.EmptyDataError:
        raise reject(Rule.empty_file, "the file has no header and no rows") from None
    except _UNREADABLE as error:
        raise reject(Rule.unreadable, f"not a readable CSV: {error}") from None


def parquet_chunks(
    path: Path, contract: DataContract, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The Parquet file batch by batch, its columns checked against the contract on the schema in
    its footer, before a batch is read. The size limit holds for the decoded data, as it does for a
    .csv.gz once inflated: run-length encoding packs 50 million equal rows into 1 MB, and
    validating them all outlasts the Lambda's timeout."""
    limit = contract.limits.max_file_bytes
    try:
        parquet = pq.ParquetFile(path)
        check_columns(parquet.schema_arrow.names, contract)
        decoded = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            decoded += batch.nbytes
            if decoded > limit:
                raise reject(Rule.decompressed_too_large, f"more than {limit} bytes once decoded")
            yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as error:
        raise reject(Rule.unreadable, f"not a readable Parquet file: {error}") from None


def strip_whitespace(frame: pd.DataFrame) -> pd.DataFrame:
    """' setosa' and 'setosa ' are the same category; spreadsheets add such spaces."""
    text_columns = frame.select_dtypes(include=["object", "string"]).columns
    if len(text_columns) == 0:
        return frame
    return frame.assign(**{name: frame[name].str.strip() for name in text_columns})


class DuplicateRowFilter:
    """Drops rows already seen in this file, across chunks, keeping the first. Remembers 8 bytes per
    distinct row (a sorted array of row hashes), not the rows."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)
        self.dropped = 0

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        first_in_chunk = ~pd.Series(hashes).duplicated().to_numpy()
        positions = np.searchsorted(self._seen, hashes)
        positions[positions == len(self._seen)] = 0
        seen_before = (self._seen[positions] == hashes) if len(self._seen) else np.zeros(len(hashes), bool)
        keep = first_in_chunk & ~seen_before
        # Both parts are sorted and distinct: a stable sort (timsort) merges the two runs in linear
        # time, where np.union1d would hash everything seen so far again, on every chunk.
        self._seen = np.sort(np.concatenate([self._seen, np.sort(hashes[keep])]), kind="stable")
        self.dropped += int((~keep).sum())
        kept: pd.DataFrame = frame[keep]
        return kept


def arrow_schema(contract: DataContract) -> pa.Schema:
    return pa.schema(
        [
            (name, pa.float64() if isinstance(column, NumericColumn) else pa.string())
            for name, column in contract.columns.items()
        ]
    )


class ParquetSink:
    """Writes typed chunks to one Parquet file with the contract's schema."""

    def __init__(self, path: Path, contract: DataContract) -> None:
        self.schema = arrow_schema(contract)
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        self._writer.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))
        self.rows += len(frame)

    def close(self) -> None:
        self._writer.close()
