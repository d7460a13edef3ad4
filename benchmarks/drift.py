"""Drift benchmark: how long common/drift.py's `compare` takes on the trainer, by rows per side, and
what sampling each side down to MAX_ROWS saves on a large dataset.

Two synthetic frames per size: 20 numeric and 5 categorical features and a numeric target, the current
one moved by 0.01 standard deviation (no column should drift). Every case runs once a round, for REPEATS
rounds; the median is reported. At 1 M rows per side, the default (sampled to 100,000 rows) runs beside
`max_rows=1_000_000` (no sampling), in the same run, for their ratio. Pure CPU: no cloud needed.
Writes benchmarks/results/drift.md.

    uv run python benchmarks/drift.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.contracts import DataContract
from common.drift import MAX_ROWS, compare

RESULTS = Path(__file__).resolve().parent / "results" / "drift.md"
CATEGORIES = list("abcdefgh")


def _contract() -> DataContract:
    columns: dict[str, object] = {f"x{i}": {"type": "numeric"} for i in range(20)}
    columns |= {f"c{i}": {"type": "categorical", "categories": CATEGORIES} for i in range(5)}
    columns["y"] = {"type": "numeric"}
    return DataContract.model_validate(
        {"model": "bench", "task": "regression", "target": "y", "columns": columns}
    )


def _frame(rows: int, shift: float, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    data: dict[str, object] = {f"x{i}": generator.normal(shift, 1, rows) for i in range(20)}
    data |= {f"c{i}": generator.choice(CATEGORIES, rows) for i in range(5)}
    data["y"] = generator.normal(size=rows)
    return pd.DataFrame(data)


def _seconds(reference: pd.DataFrame, current: pd.DataFrame, max_rows: int) -> float:
    started = time.perf_counter()
    report = compare(reference, current, _contract(), max_rows=max_rows)
    seconds = time.perf_counter() - started
    assert not report.drifted, report.drifted_columns
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    load_before = os.getloadavg()[0]
    cases = {
        "10,000 | all": (_frame(10_000, 0, 1), _frame(10_000, 0.01, 2), MAX_ROWS),
        "100,000 | all": (_frame(100_000, 0, 1), _frame(100_000, 0.01, 2), MAX_ROWS),
    }
    big_reference, big_current = _frame(1_000_000, 0, 3), _frame(1_000_000, 0.01, 4)
    cases[f"1,000,000 | sampled to {MAX_ROWS:,} (the default)"] = (big_reference, big_current, MAX_ROWS)
    cases["1,000,000 | all (`max_rows=1_000_000`)"] = (big_reference, big_current, 1_000_000)
    # Round robin, so that the other work on the machine weighs on every case alike.
    times: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, (reference, current, max_rows) in cases.items():
            times[case].append(_seconds(reference, current, max_rows))
    medians = {case: statistics.median(seconds) for case, seconds in times.items()}
    sampled, whole = list(medians.values())[2:]
    load_after = os.getloadavg()[0]
    lines = [
        "# Drift: `compare` on the trainer",
        "",
        "`uv run python benchmarks/drift.py`: 26 columns (20 numeric, 5 categorical features, a numeric",
        f"target), median of {repeats} rounds, on this 2-core machine shared with other work (1-minute",
        f"load average {load_before:.1f} before, {load_after:.1f} after).",
        "",
        "| rows a side | compared | median seconds |",
        "| ---: | --- | ---: |",
        *(f"| {case} | {seconds:.2f} |" for case, seconds in medians.items()),
        "",
        f"Sampling a million-row side to {MAX_ROWS:,} rows makes the report {whole / sampled:.1f}x faster",
        "(same run).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
