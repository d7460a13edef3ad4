"""Reading a data file in bounded memory, and the pure preprocessing steps applied to each chunk.

Everything here works on streams and DataFrames; where the bytes come from is the caller's business.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.contracts import DataContract, DataFormat, NumericColumn
from common.validation import Rule, reject

CHUNK_ROWS = 100_000


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


_UNREADABLE = (pd.errors.ParserError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error, OSError)


def csv_chunks(
    stream: BinaryIO, contract: DataContract, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The CSV as string columns, chunk by chunk; typing is validation's job."""
    try:
        reader = pd.read_csv(
            stream,
            dtype=str,
            keep_default_na=False,
            na_values=contract.limits.na_values,
            sep=contract.limits.delimiter,
            chunksize=chunk_rows,
            encoding="utf-8",
            engine="c",
        )
        yield from reader
    except pd.errors.EmptyDataError:
        raise reject(Rule.empty_file, "the file has no header and no rows") from None
    except _UNREADABLE as error:
        raise reject(Rule.unreadable, f"not a readable CSV: {error}") from None


def parquet_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=chunk_rows):
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
