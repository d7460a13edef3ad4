"""Deterministic datasets and contracts for tests: any model name, any size."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
SPECIES = ["setosa", "versicolor", "virginica"]


def contract_yaml(base: str, model: str, **limits: Any) -> bytes:
    """The example contract `base`, renamed to `model`, with some limits overridden."""
    document = yaml.safe_load((CONTRACTS / f"{base}.yaml").read_text())
    document["model"] = model
    document.setdefault("limits", {}).update(limits)
    return yaml.safe_dump(document).encode()


def iris_frame(rows: int = 150, seed: int = 0) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    species = generator.integers(0, 3, rows)
    centre = np.array([[5.0, 3.4, 1.5, 0.25], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])[species]
    values = np.clip(centre + generator.normal(0, 0.3, (rows, 4)), 0.1, None).round(2)
    frame = pd.DataFrame(values, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    frame["species"] = [SPECIES[index] for index in species]
    return frame


def house_frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Categorical features, with missing values that the CSV writes as NA."""
    generator = np.random.default_rng(seed)
    area = generator.uniform(30, 250, rows).round(1)
    frame = pd.DataFrame(
        {
            "area_m2": area,
            "rooms": np.clip((area / 25).round(), 1, 12),
            "year_built": generator.integers(1900, 2024, rows).astype(float),
            "district": generator.choice(["north", "south", "east", "west", "centre"], rows),
            "heating": generator.choice(["gas", "electric", "heat_pump", "oil"], rows).astype(object),
        }
    )
    frame.loc[generator.random(rows) < 0.1, "year_built"] = np.nan
    frame.loc[generator.random(rows) < 0.1, "heating"] = None
    frame["price"] = (area * 3000 + generator.normal(0, 20000, rows)).round(0)
    return frame


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, na_rep="NA").encode()


def to_csv_gz(frame: pd.DataFrame) -> bytes:
    return gzip.compress(to_csv(frame), mtime=0)


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def gzip_bomb(decompressed_bytes: int) -> bytes:
    """A small .csv.gz that inflates to `decompressed_bytes` of well-formed rows."""
    header = b"sepal_length,sepal_width,petal_length,petal_width,species\n"
    row = b"5.1,3.5,1.4,0.2,setosa\n"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as archive:
        archive.write(header)
        block = row * (1 << 16)
        for _ in range(decompressed_bytes // len(block) + 1):
            archive.write(block)
    return buffer.getvalue()


def noisy_iris_frame(rows: int, seed: int, noise: float = 0.3) -> pd.DataFrame:
    """Iris-like rows with label-independent noise: more noise, a worse model."""
    frame = iris_frame(rows, seed)
    generator = pd.Series(range(rows)).sample(frac=1, random_state=seed).to_numpy()
    numeric = frame.columns[:4]
    frame[numeric] = (frame[numeric] + (generator[:, None] % 7 - 3) * noise / 3).clip(lower=0.1)
    return frame.round(2)


def noisy_iris_csv(rows: int, seed: int, noise: float = 0.3) -> bytes:
    return to_csv(noisy_iris_frame(rows, seed, noise))


def iris_csv(transform: Callable[[pd.DataFrame], pd.DataFrame] = lambda frame: frame) -> bytes:
    """60 rows of iris as CSV, changed by `transform` first."""
    return to_csv(transform(iris_frame(60)))


def with_value(column: str, row: int, value: str | float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[row, column] = value
        return frame

    return change


# A bad file of each rule: (the rule it is quarantined under, its bytes, the iris contract's limits).
# tests/unit/test_handle_ingest.py runs every one through the handler; tests/e2e/test_ingest.py
# runs one of each family through the deployed function.
BAD_FILES: dict[str, tuple[str, Callable[[], bytes], dict[str, int]]] = {
    "missing column": ("missing_columns", lambda: iris_csv(lambda f: f.drop(columns=["petal_width"])), {}),
    "extra column": ("unexpected_columns", lambda: iris_csv(lambda f: f.assign(colour="red")), {}),
    "wrong type": ("wrong_type", lambda: iris_csv(with_value("sepal_length", 3, "five point one")), {}),
    "out of range": ("out_of_range", lambda: iris_csv(with_value("petal_length", 7, 99.0)), {}),
    "unknown category": ("unknown_category", lambda: iris_csv(with_value("species", 5, "daisy")), {}),
    "empty file": ("empty_file", lambda: b"", {}),
    "header only": (
        "header_only",
        lambda: b"sepal_length,sepal_width,petal_length,petal_width,species\n",
        {},
    ),
    "truncated csv": ("null_values", lambda: iris_csv()[:-15], {}),
    "garbled csv": ("unreadable", lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 50, {}),
    "over the size limit": ("file_too_large", lambda: iris_csv(), {"max_file_bytes": 1000}),
    "gzip bomb": ("decompressed_too_large", lambda: gzip_bomb(50 * 2**20), {"max_file_bytes": 2**20}),
}


def bad_file_key(model: str, case: str) -> str:
    return f"{model}/{case.replace(' ', '_')}{'.csv.gz' if case == 'gzip bomb' else '.csv'}"
