from __future__ import annotations

import gzip
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import fastparquet
import pandas as pd
import pyarrow.parquet as pq
import pytest

from common import tabular
from common.contracts import DataFormat, parse_contract
from common.validation import DatasetRejectedError, Rule, validate
from tests import datasets

ROOT = Path(__file__).resolve().parents[2]
IRIS = parse_contract(datasets.contract_yaml("iris", "iris"))
HOUSES = parse_contract(datasets.contract_yaml("house-prices", "houses"))


def test_csv_is_read_in_chunks_of_strings_with_na_as_missing() -> None:
    houses = parse_contract(datasets.contract_yaml("house-prices", "houses"))
    frame = datasets.house_frame(250)
    chunks = list(tabular.csv_chunks(io.BytesIO(datasets.to_csv(frame)), houses, chunk_rows=100))
    assert [len(chunk) for chunk in chunks] == [100, 100, 50]
    assert pd.concat(chunks)["heating"].isna().sum() == frame["heating"].isna().sum()


def test_with_numbers_the_numeric_columns_are_read_as_numbers_and_a_word_among_them_stops_the_reader() -> (
    None
):
    frame = datasets.house_frame(250)
    chunks = list(
        tabular.csv_chunks(io.BytesIO(datasets.to_csv(frame)), HOUSES, chunk_rows=100, numbers=True)
    )
    assert [len(chunk) for chunk in chunks] == [100, 100, 50]
    assert chunks[0]["area_m2"].dtype == "float64"
    assert pd.concat(chunks)["heating"].isna().sum() == frame["heating"].isna().sum()  # text stays text
    frame["area_m2"] = frame["area_m2"].astype(object)
    frame.loc[120, "area_m2"] = "many"
    with pytest.raises(ValueError, match="many"):
        list(tabular.csv_chunks(io.BytesIO(datasets.to_csv(frame)), HOUSES, chunk_rows=100, numbers=True))


def test_garbled_bytes_are_unreadable() -> None:
    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.csv_chunks(io.BytesIO(b"\xff\xfe\x00garbage\x89" * 100), IRIS))
    assert rejected.value.rule is Rule.unreadable


def test_a_gzip_bomb_stops_at_the_limit_while_inflating() -> None:
    bomb = datasets.gzip_bomb(20 * 2**20)
    assert len(bomb) < 200_000
    stream = tabular.decompressed(io.BytesIO(bomb), DataFormat.csv_gz, limit=2**20)
    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.csv_chunks(stream, IRIS))
    assert rejected.value.rule is Rule.decompressed_too_large


def test_a_truncated_gzip_is_unreadable() -> None:
    whole = gzip.compress(datasets.to_csv(datasets.iris_frame(2000)))
    stream = tabular.decompressed(io.BytesIO(whole[: len(whole) // 2]), DataFormat.csv_gz, limit=2**30)
    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.csv_chunks(stream, IRIS))
    assert rejected.value.rule is Rule.unreadable


def test_duplicate_rows_are_dropped_across_chunks_keeping_the_first() -> None:
    deduplicate = tabular.DuplicateRowFilter()
    first = pd.DataFrame({"a": [1.0, 2.0, 2.0], "b": ["x", "y", "y"]})
    second = pd.DataFrame({"a": [1.0, 3.0], "b": ["x", "z"]}, index=[3, 4])

    kept = pd.concat([deduplicate(first), deduplicate(second)])

    assert kept.to_dict("list") == {"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}
    assert deduplicate.dropped == 2


def test_whitespace_around_categories_is_stripped() -> None:
    frame = pd.DataFrame({"species": [" setosa", "virginica "], "x": [1.0, 2.0]})
    assert tabular.strip_whitespace(frame)["species"].tolist() == ["setosa", "virginica"]


def test_the_parquet_sink_writes_the_contract_schema(tmp_path: Path) -> None:
    sink = tabular.ParquetSink(tmp_path / "out.parquet", IRIS)
    frame = datasets.iris_frame(10)
    sink.write(frame)
    sink.write(frame)
    sink.close()
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert sink.rows == 20
    assert list(written.columns) == list(IRIS.columns)


def _typed_houses(rows: int) -> pd.DataFrame:
    """House rows as validation leaves them: numbers as float64, categories as str, both with nulls."""
    return validate(datasets.house_frame(rows), HOUSES)


def test_the_trainer_reads_what_ingest_writes_as_it_reads_what_pyarrow_writes(tmp_path: Path) -> None:
    # GIVEN typed chunks written by the ingest function's sink, one as de-duplication leaves it
    typed = _typed_houses(300)
    chunks = [typed.iloc[:120], typed.iloc[120:][::2]]
    sink = tabular.ParquetSink(tmp_path / "ingested.parquet", HOUSES)
    for chunk in chunks:
        sink.write(chunk)
    sink.close()
    # AND the same rows written by pandas with pyarrow, as the trainer itself writes Parquet
    expected = pd.concat(chunks, ignore_index=True)
    expected.to_parquet(tmp_path / "reference.parquet", index=False, engine="pyarrow")

    # WHEN the trainer reads the file (pandas with pyarrow)
    written = pd.read_parquet(tmp_path / "ingested.parquet", engine="pyarrow")

    # THEN it gets the same frame: columns, dtypes, values, nulls (NaN numbers and missing categories)
    pd.testing.assert_frame_equal(written, pd.read_parquet(tmp_path / "reference.parquet", engine="pyarrow"))
    assert sink.rows == len(written) == 210
    assert {str(dtype) for dtype in written.dtypes} == {"float64", "str"}
    table = pq.read_table(tmp_path / "ingested.parquet")
    types = {field.name: str(field.type) for field in table.schema}
    numbers = set(written.select_dtypes("number").columns)
    assert types == {name: "double" if name in numbers else "string" for name in written.columns}
    nulls = {name: table[name].null_count for name in ("year_built", "heating")}
    assert nulls == {name: int(expected[name].isna().sum()) for name in nulls}
    assert min(nulls.values()) > 0


def test_a_sink_that_received_no_rows_leaves_a_file_of_the_contract_schema(tmp_path: Path) -> None:
    tabular.ParquetSink(tmp_path / "empty.parquet", HOUSES).close()

    written = pd.read_parquet(tmp_path / "empty.parquet", engine="pyarrow")

    assert list(written.columns) == list(HOUSES.columns) and written.empty


# The ingest function ships without pyarrow, and fastparquet and pandas take other paths without it
# (strings as Python objects): this runs the Parquet path as the function does, pyarrow unimportable.
_INGEST_WITHOUT_PYARROW = """
import json, sys
sys.modules["pyarrow"] = None
from pathlib import Path
from common import tabular
from common.contracts import parse_contract
from common.validation import validate
contract = parse_contract(Path(sys.argv[1]).read_bytes())
sink = tabular.ParquetSink(Path(sys.argv[3]), contract)
sizes = []
for chunk in tabular.parquet_chunks(Path(sys.argv[2]), contract, chunk_rows=100):
    sizes.append(len(chunk))
    sink.write(validate(tabular.strip_whitespace(chunk), contract))
sink.close()
loaded = sorted(name for name, module in sys.modules.items() if name.startswith("pyarrow") and module)
print(json.dumps({"sizes": sizes, "pyarrow": loaded}))
"""


def test_the_parquet_path_runs_without_pyarrow_as_the_function_ships(tmp_path: Path) -> None:
    # GIVEN an upload written by pandas with pyarrow: row groups of 128 rows, a categorical column,
    # missing numbers and missing categories
    upload = datasets.house_frame(300).astype({"district": "category"})
    upload.to_parquet(tmp_path / "upload.parquet", index=False, engine="pyarrow", row_group_size=128)
    (tmp_path / "houses.yaml").write_bytes(datasets.contract_yaml("house-prices", "houses"))

    # WHEN it is read, validated and written again in a Python where pyarrow cannot be imported
    done = subprocess.run(
        [sys.executable, "-c", _INGEST_WITHOUT_PYARROW]
        + [str(tmp_path / name) for name in ("houses.yaml", "upload.parquet", "ingested.parquet")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    # THEN it reads row group by row group in chunks of at most 100 rows, and writes what the
    # trainer reads as the rows validation types in this process
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"sizes": [100, 28, 100, 28, 44], "pyarrow": []}
    written = pd.read_parquet(tmp_path / "ingested.parquet", engine="pyarrow")
    pd.testing.assert_frame_equal(written, _typed_houses(300))


def test_strings_that_decode_past_the_limit_are_refused_though_the_footer_is_small(tmp_path: Path) -> None:
    # GIVEN 20,000 rows whose category is 1,000 characters long: 20 MB of strings once decoded,
    # which dictionary encoding stores once and the footer cannot tell
    frame = datasets.iris_frame(20_000).assign(species="setosa" * 167)
    path = tmp_path / "long.parquet"
    frame.to_parquet(path, index=False, engine="pyarrow", row_group_size=5_000)
    assert path.stat().st_size < 2**20
    limited = parse_contract(datasets.contract_yaml("iris", "iris", max_file_bytes=16 * 2**20))

    with pytest.raises(DatasetRejectedError) as rejected:
        for _ in tabular.parquet_chunks(path, limited):
            pass

    assert str(rejected.value) == f"decompressed_too_large: more than {16 * 2**20} bytes once decoded"


def _with_footer(footer: bytes) -> bytes:
    return b"PAR1" + footer + struct.pack("<I", len(footer)) + b"PAR1"


def test_a_footer_declaring_two_billion_items_is_unreadable_in_bounded_memory(tmp_path: Path) -> None:
    # GIVEN a 9-byte footer: a schema list of 2**31 - 1 items, which took the decoder to 8 GB
    path = tmp_path / "flood.parquet"
    path.write_bytes(_with_footer(bytes([0x15, 0x02, 0x19, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF, 0x07])))

    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.parquet_chunks(path, IRIS))

    assert rejected.value.rule is Rule.unreadable


def test_a_crash_of_the_decoder_makes_the_file_unreadable_not_the_function_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a decoder that crashes as fastparquet's unchecked code does on some damaged files
    path = tmp_path / "data.parquet"
    datasets.iris_frame(10).to_parquet(path, index=False)
    monkeypatch.setattr(fastparquet, "ParquetFile", lambda _: os.kill(os.getpid(), signal.SIGSEGV))

    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.parquet_chunks(path, IRIS))

    assert rejected.value.rule is Rule.unreadable
    assert str(rejected.value).endswith("not a readable Parquet file: its decoder crashed (signal SIGSEGV)")


def test_a_decoder_stuck_in_a_loop_makes_the_file_unreadable_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a decoder that never answers, as fastparquet looped on one fuzzed file
    path = tmp_path / "data.parquet"
    datasets.iris_frame(10).to_parquet(path, index=False)
    # (A minute, not forever: without the stall check the test ends with the decoder's own result.)
    monkeypatch.setattr(fastparquet, "ParquetFile", lambda _: time.sleep(60))
    monkeypatch.setattr(tabular, "DECODE_STALL_SECONDS", 1.0)

    with pytest.raises(DatasetRejectedError) as rejected:
        list(tabular.parquet_chunks(path, IRIS))

    assert rejected.value.rule is Rule.unreadable
    assert "made no progress for 1 s" in str(rejected.value)


def test_damaged_parquet_files_are_read_or_refused_never_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A damaged file that sends the decoder into a loop is given up on sooner than in production.
    monkeypatch.setattr(tabular, "DECODE_STALL_SECONDS", 5.0)
    # GIVEN a valid file, then copies with bytes changed, cut short, or cut short with the trailer kept
    # (the cut that crashed fastparquet most often)
    whole = datasets.to_parquet(datasets.iris_frame(3000))
    generator = random.Random(7)
    outcomes: set[str] = set()
    for case in range(60):
        damaged = bytearray(whole)
        if case % 3 == 0:
            for _ in range(generator.randint(1, 8)):
                damaged[generator.randrange(len(damaged))] = generator.randrange(256)
        else:
            damaged = damaged[: generator.randrange(len(damaged))]
            damaged += whole[-8:] if case % 3 == 1 else b""
        path = tmp_path / f"damaged-{case}.parquet"
        path.write_bytes(bytes(damaged))

        # WHEN each is read; THEN it gives rows or is refused with a rule
        try:
            rows = sum(len(chunk) for chunk in tabular.parquet_chunks(path, IRIS))
            outcomes.add(f"{rows} rows")
        except DatasetRejectedError as rejected:
            outcomes.add(rejected.rule)

    assert Rule.unreadable in outcomes
