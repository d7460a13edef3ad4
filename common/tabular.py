"""Reading a data file in bounded memory, and the pure preprocessing steps applied to each chunk.

Everything here works on streams and DataFrames; where the bytes come from is the caller's business.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import faulthandler
import gzip
import io
import multiprocessing
import os
import re
import resource
import signal
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO

import fastparquet
import numpy as np
import pandas as pd

from common.contracts import DataContract, DataFormat, NumericColumn
from common.validation import DatasetRejectedError, Rule, check_columns, reject

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
    stream: BinaryIO, contract: DataContract, chunk_rows: int = CHUNK_ROWS, *, numbers: bool = False
) -> Iterator[pd.DataFrame]:
    """The CSV as string columns, chunk by chunk; typing is validation's job. The header is checked
    against the contract before any row is built: the parser takes seconds a chunk on a file with
    thousands of columns (15 s for one row of 120,000), and such a chunk can fill the memory.

    With `numbers`, the contract's numeric columns are parsed as float64 by the C parser instead, for
    a reader that needs speed more than a report per cell (batch scoring: on 20 numeric features the
    text took 24 of 32 s a million rows). A cell that is not a number then raises ValueError."""
    guard = TextGuard(stream)
    columns: dict[str, str] = {
        name: "float64" if numbers and isinstance(column, NumericColumn) else "str"
        for name, column in contract.columns.items()
    }
    try:
        reader = pd.read_csv(
            io.BufferedReader(guard),
            dtype=columns if numbers else str,
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


class TextInNumericColumnError(Exception):
    """The fast reader met a value it does not read as a number (or a file it cannot read at all):
    the file is read again as text."""


def numeric_csv_chunks(stream: BinaryIO, contract: DataContract, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The CSV with its numeric columns read as numbers (csv_chunks, `numbers`). Anything it cannot
    read stops it, as TextInNumericColumnError; the caller then starts over with the text reader,
    which says exactly what is wrong. The C parser reads fewer spellings of a number than Python's
    float() does ('1_000', 'nan', Arabic-Indic digits) and none that float() refuses, and the same
    digits to the same double: a file it reads is one the text reader would read the same way."""
    try:
        yield from csv_chunks(stream, contract, chunk_rows, numbers=True)
    except (ValueError, DatasetRejectedError) as error:
        raise TextInNumericColumnError(str(error)) from None


# Parquet is read and written with fastparquet, not pyarrow, which alone took the ingest function
# past Lambda's 250 MiB limit (pyproject.toml, the `lambda` group). fastparquet's decoder is compiled
# without bounds checks, and a damaged footer or page crashes the process: random byte flips of a
# valid file did within a thousand tries. An uploaded file is therefore decoded in a child process,
# so a crash makes the file unreadable instead of killing the function before it quarantines it.
# The child is forked: it shares the loaded modules, where spawning one imported pandas again (a
# second). The function runs one file at a time, with no thread of its own, which forking needs.
_FORK = multiprocessing.get_context("fork")
# fastparquet also trusts the sizes a footer gives: a 20-byte footer declaring a list of two billion
# items took 8 GB before it was stopped. The child may map that many bytes more than it was forked
# with, twice the decoded-size limit (a string decodes to a Python object, larger than Arrow counts
# it) and no less than the floor, so a bomb runs the child out of memory, not the function.
_DECODE_MEMORY_FLOOR = 256 * 2**20
_DECODE_MEMORY_PER_LIMIT_BYTE = 2
# What a Parquet value takes at least once decoded, when it is not a number: the 4-byte offset Arrow
# keeps for a string (its characters are counted once it is decoded).
_OFFSET_BYTES = 4


@dataclass(frozen=True)
class _Footer:
    """What the child learnt from the footer, before decoding a value."""

    columns: list[str]
    least_decoded_bytes: int


@dataclass(frozen=True)
class _Unreadable:
    reason: str


# The longest a healthy decoder goes between two messages: one row group of a file at the contract's
# default size limit (256 MiB) decodes in a few seconds.
DECODE_STALL_SECONDS = 30.0
_GO_ON = "go on"
_END = "end"


def _least_decoded_bytes(parquet: Any) -> int:
    """The decoded size the footer commits to: a number takes its width, anything else an offset.
    The decoder allocates each row group at the footer's row count, so this bounds its memory."""
    rows = sum(int(group.num_rows) for group in parquet.row_groups)
    widths = [
        dtype.itemsize if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM" else _OFFSET_BYTES
        for dtype in parquet.dtypes.values()
    ]
    return rows * sum(widths)


def _decoded_bytes(frame: pd.DataFrame) -> int:
    """The decoded size of a chunk as Arrow counts it: a number's width, a string's characters and
    its offset."""
    numbers = frame.select_dtypes(include=["number", "bool", "datetime", "timedelta"])
    text = [name for name in frame.columns if name not in numbers.columns]
    lengths = sum(int(frame[name].astype("str").str.len().sum()) for name in text)
    return int(numbers.memory_usage(index=False).sum()) + lengths + _OFFSET_BYTES * len(text) * len(frame)


def _send_chunks(path: str, chunk_rows: int, connection: Connection) -> None:
    parquet = fastparquet.ParquetFile(path)
    columns = list(parquet.columns)
    connection.send(_Footer(columns, _least_decoded_bytes(parquet)))
    if connection.recv() != _GO_ON:
        return
    for group in parquet.iter_row_groups(columns=columns, index=False):
        for start in range(0, len(group), chunk_rows):
            connection.send(group.iloc[start : start + chunk_rows])
    connection.send(_END)


def _limit_memory(budget: int) -> None:
    statm = Path("/proc/self/statm")
    if not statm.exists():  # not Linux, so not Lambda: a developer's machine
        return
    pages = int(statm.read_text().split()[0])
    cap = pages * os.sysconf("SC_PAGE_SIZE") + budget
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _decode(path: str, chunk_rows: int, memory_budget: int, connection: Connection) -> None:
    """The child's side: the footer, then the rows a chunk at a time, then the end or why not."""
    _limit_memory(memory_budget)
    # A crash here is the file's doing, and the parent reports it as such: no interpreter dump.
    faulthandler.disable()
    # fastparquet prints what it cannot parse; the reason goes back to the parent instead.
    with Path(os.devnull).open("w") as discard, contextlib.redirect_stdout(discard):
        try:
            _send_chunks(path, chunk_rows, connection)
        except (BrokenPipeError, EOFError):
            return  # the parent stopped reading: nothing waits for the rest
        except MemoryError:
            connection.send(_Unreadable(f"decoding it took more than {memory_budget} bytes of memory"))
        except Exception as error:  # a damaged file can make the decoder raise anything at all
            reason = str(error).replace(path, "the file") or type(error).__name__
            connection.send(_Unreadable(reason))


def _unreadable(reason: str) -> DatasetRejectedError:
    return reject(Rule.unreadable, f"not a readable Parquet file: {reason}")


class _ParquetDecoder:
    """A child process decoding one Parquet file, which waits to be told to go on past the footer."""

    def __init__(self, path: Path, chunk_rows: int, memory_budget: int) -> None:
        self._connection, child_end = _FORK.Pipe()
        self._process = _FORK.Process(
            target=_decode, args=(str(path), chunk_rows, memory_budget, child_end), daemon=True
        )
        self._process.start()
        child_end.close()

    def _receive(self) -> object:
        # A damaged file can also send the decoder into a loop (seen once in a thousand fuzzed files,
        # at full CPU): no word from it for this long and the file is unreadable, long before the
        # function's own timeout would retry it into the dead-letter queue.
        if not self._connection.poll(DECODE_STALL_SECONDS):
            self.close()
            raise _unreadable(f"its decoder made no progress for {DECODE_STALL_SECONDS:g} s")
        try:
            message: object = self._connection.recv()
        except EOFError:
            self._process.join()
            code = self._process.exitcode or 0
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            raise _unreadable(f"its decoder crashed ({how})") from None
        if isinstance(message, _Unreadable):
            raise _unreadable(message.reason)
        return message

    def footer(self) -> _Footer:
        footer = self._receive()
        assert isinstance(footer, _Footer)
        return footer

    def chunks(self) -> Iterator[pd.DataFrame]:
        with contextlib.suppress(OSError):  # the child died: receiving says how
            self._connection.send(_GO_ON)
        while isinstance(chunk := self._receive(), pd.DataFrame):
            yield chunk

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._connection.close()


def parquet_chunks(
    path: Path, contract: DataContract, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The Parquet file row group by row group, in chunks of at most `chunk_rows` rows, its columns
    checked against the contract on the schema in its footer, before a value is decoded. The size
    limit holds for the decoded data, as it does for a .csv.gz once inflated: run-length encoding
    packs 50 million equal rows into 1 MB, and validating them all outlasts the Lambda's timeout.
    What the footer declares is checked before decoding, what the strings hold as they come."""
    limit = contract.limits.max_file_bytes
    too_large = f"more than {limit} bytes once decoded"
    memory = max(_DECODE_MEMORY_FLOOR, _DECODE_MEMORY_PER_LIMIT_BYTE * limit)
    decoder = _ParquetDecoder(path, chunk_rows, memory)
    try:
        footer = decoder.footer()
        check_columns(footer.columns, contract)
        if footer.least_decoded_bytes > limit:
            raise reject(Rule.decompressed_too_large, too_large)
        decoded = 0
        for chunk in decoder.chunks():
            decoded += _decoded_bytes(chunk)
            if decoded > limit:
                raise reject(Rule.decompressed_too_large, too_large)
            yield chunk
    finally:
        decoder.close()


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


# Written in-process: the frames are our own, typed by validation.
_COMPRESSION = "ZSTD"


def _empty_frame(contract: DataContract) -> pd.DataFrame:
    return pd.DataFrame(
        {
            name: pd.Series(dtype="float64" if isinstance(column, NumericColumn) else "str")
            for name, column in contract.columns.items()
        }
    )


class ParquetSink:
    """Writes typed chunks to one Parquet file with the contract's schema (numbers as doubles,
    categories as UTF-8 strings, every column nullable), a row group a chunk."""

    def __init__(self, path: Path, contract: DataContract) -> None:
        fastparquet.write(str(path), _empty_frame(contract), compression=_COMPRESSION, write_index=False)
        self._file = fastparquet.ParquetFile(str(path))
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        self._file.write_row_groups(frame, compression=_COMPRESSION)
        self.rows += len(frame)

    def close(self) -> None:
        """Nothing is buffered: each write leaves a whole file, its footer rewritten."""


def chunks(
    path: Path, stream: BinaryIO, data_format: DataFormat, contract: DataContract, rows: int, *, numbers: bool
) -> Iterator[pd.DataFrame]:
    """An object's rows in chunks of `rows`, as ingest and batch read them: Parquet from `path` on disk
    (its schema is in a footer), CSV from `stream`, decompressed within the contract's size limit,
    its numbers read by the C parser first when `numbers` (numeric_csv_chunks says when it gives up)."""
    if data_format is DataFormat.parquet:
        return parquet_chunks(path, contract, rows)
    plain = decompressed(stream, data_format, contract.limits.max_file_bytes)
    if numbers:
        return numeric_csv_chunks(plain, contract, rows)
    return csv_chunks(plain, contract, rows)
