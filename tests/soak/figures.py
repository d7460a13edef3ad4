"""What a soak suite measured: printed, and kept in benchmarks/results/soak.md with the date and the
machine. Each suite owns one section of the file, so running one suite alone keeps the other's."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "soak.md"
TITLE = "# Soak: the load suites"
INTRO = (
    "`make soak` (`uv run pytest tests/soak -q -s`) runs both suites against a local cloud of their own "
    "(started by the session fixture, as for the e2e tests); a suite alone: "
    "`uv run pytest tests/soak/test_load.py -q -s`. They take minutes, so `make test` leaves them out. "
    "Smaller runs for development: `ARRIVAL_SOAK_FILES`, `ARRIVAL_SOAK_SECONDS` (uploads), "
    "`ARRIVAL_SOAK_CONNECTIONS`, `ARRIVAL_SOAK_PROMOTIONS` (serving); each section names the figures it "
    "ran with. The worker runs with the test settings of tests/conftest.py (quiet period 1 s)."
)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    memory_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load} when the suite ended "
        "(the machine is shared)"
    )


def table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def optional(value: float | None, spec: str = "") -> str:
    """A figure the run may not have reached, when it failed before."""
    return "-" if value is None else format(value, spec)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def record(title: str, body: str) -> None:
    """Print the section and put it in the results file in place of the same suite's last one."""
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    section = f"## {title}\n\nRun on {today}; {machine()}.\n\n{body.strip()}\n"
    print(f"\n{section}", flush=True)  # noqa: T201 (a soak run shows its figures; it runs with -s)
    sections = _sections(RESULTS.read_text() if RESULTS.exists() else "")
    sections[title] = section
    RESULTS.write_text("\n".join([TITLE, "", INTRO, "", *sections.values()]))


def _sections(text: str) -> dict[str, str]:
    """The file's sections by title, in their order (the title and introduction are rewritten)."""
    found: dict[str, str] = {}
    for chunk in text.split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        found[title] = f"## {chunk.rstrip()}\n"
    return found


@contextmanager
def recorded(section: str, run: Any, render: Callable[[], str]) -> Iterator[None]:
    """Writes a suite's figures however it ends; a failure goes into `run.failure`, and so into them."""
    try:
        yield
    except BaseException as error:
        run.failure = str(error).splitlines()[0][:300] if str(error) else repr(error)
        raise
    finally:
        record(section, render())
