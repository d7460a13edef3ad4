"""The ingest function's batch, timeout and queue visibility, as template.yaml deploys them by
default, fit the largest file a contract allows by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common.contracts import FileLimits
from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "results" / "ingest.md"
# A row of the benchmark's table: | file | size | wall | Lambda duration | peak memory |
ROW = re.compile(r"^\| [^|]+ \| ([\d.]+) MB \| [\d.]+ s \| ([\d.]+) s \| \d+ MB \|$", re.MULTILINE)
# The benchmark runs on a workstation's cores; a 1024 MB Lambda gets about 0.6 of a vCPU
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html: 1,769 MB is one vCPU),
# and conversion is CPU-bound, so the measured time is scaled by this much.
LAMBDA_SLOWDOWN = 2.0
# AWS: "set the source queue's visibility timeout to at least six times the timeout that you
# configure on your function" (Lambda developer guide, "Using Lambda with Amazon SQS").
VISIBILITY_PER_TIMEOUT = 6


def _defaults() -> dict[str, Any]:
    template = load_template(ROOT / "template.yaml")
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}

    def resolve(value: Any) -> Any:
        return defaults[value["Ref"]] if isinstance(value, dict) and "Ref" in value else value

    function = template["Resources"]["IngestFunction"]["Properties"]
    [source] = [event["Properties"] for event in function["Events"].values() if event["Type"] == "SQS"]
    queue = template["Resources"]["IngestQueue"]["Properties"]
    return {
        "timeout": int(resolve(function["Timeout"])),
        "batch_size": int(resolve(source.get("BatchSize", 10))),
        "visibility": int(resolve(queue["VisibilityTimeout"])),
    }


def _measured_seconds_per_mb() -> float:
    """Lambda duration over size for the benchmark's largest file (smaller files are mostly the
    invocation's fixed cost, which the largest file's rate includes too)."""
    rows = [(float(size), float(seconds)) for size, seconds in ROW.findall(BENCHMARK.read_text())]
    assert rows, f"no results table in {BENCHMARK}"
    size, seconds = max(rows)
    return seconds / size


def test_the_worst_batch_fits_the_function_timeout() -> None:
    deployed = _defaults()
    largest_mb = FileLimits().max_file_bytes / 10**6
    per_file = largest_mb * _measured_seconds_per_mb() * LAMBDA_SLOWDOWN

    worst_batch = deployed["batch_size"] * per_file

    assert worst_batch <= deployed["timeout"], (
        f"{deployed['batch_size']} files of {largest_mb:.0f} MB take about {worst_batch:.0f} s; "
        f"the function times out after {deployed['timeout']} s"
    )


def test_the_queue_hides_a_message_for_six_function_timeouts() -> None:
    deployed = _defaults()
    assert deployed["visibility"] >= VISIBILITY_PER_TIMEOUT * deployed["timeout"]
