from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd
import pytest

from common import tabular
from common.contracts import DataFormat, parse_contract
from common.validation import DatasetRejectedError, Rule
from tests import datasets

IRIS = parse_contract(datasets.contract_yaml("iris", "iris"))


def test_csv_is_read_in_chunks_of_strings_with_na_as_missing() -> None:
    houses = parse_contract(datasets.contract_yaml("house-prices", "houses"))
    frame = datasets.house_frame(250)
    chunks = list(tabular.csv_chunks(io.BytesIO(datasets.to_csv(frame)), houses, chunk_rows=100))
    assert [len(chunk) for chunk in chunks] == [100, 100, 50]
    assert pd.concat(chunks)["heating"].isna().sum() == frame["heating"].isna().sum()


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
