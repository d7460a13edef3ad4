"""Sweep benchmark: how long a file whose S3 notification was lost waits for its outcome, with the
sweep on its schedule and nothing invoked by hand.

Starts its own local cloud (free ports, temporary state) and deploys the stack with template.yaml's
defaults but for `SweepIntervalMinutes` (--interval) and `TestDropNotificationsPrefix`, which makes
the ingest function's event source delete S3's notifications of keys under that prefix. It uploads
--files files there, spread over one interval so they land at different points of the schedule
(one of them empty, as in the issue's report), and times each from its landing (the version's
LastModified) to its outcome: its acceptance, or its quarantine report. Each file's first marker is
checked to be the sweep's, so no notification reached ingest. Writes benchmarks/results/sweep.md.

    uv run python benchmarks/sweep.py [--interval 1] [--files 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.layout import outcome_key  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack, load_template  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import datasets  # noqa: E402

STACK = "arrival-bench-sweep"
MODEL = "lost-iris"
OUTCOMES = {"accepted", "duplicate", "quarantined", "ignored"}


def _markers(s3: Any, bucket: str, key: str, version: str) -> list[str]:
    """The statuses the version's marker has had, oldest first (S3 lists versions newest first)."""
    marker = outcome_key(key, version)
    versions = [
        v
        for v in s3.list_object_versions(Bucket=bucket, Prefix=marker).get("Versions", [])
        if v["Key"] == marker
    ]
    return [
        json.loads(s3.get_object(Bucket=bucket, Key=marker, VersionId=v["VersionId"])["Body"].read())[
            "status"
        ]
        for v in reversed(versions)
    ]


def run(interval_minutes: int, files: int) -> tuple[list[dict[str, Any]], float]:
    state = Path(tempfile.mkdtemp(prefix="arrival-bench-sweep-"))
    settings = LocalCloudSettings(
        state_dir=state, aws_port=free_port(), mlflow_port=free_port(), api_port=free_port(), agent_roles=[]
    )
    os.environ.update(
        AWS_ENDPOINT_URL=settings.aws_endpoint_url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106  # pragma: allowlist secret  # LocalStack accepts any
        AWS_DEFAULT_REGION=settings.region,
    )
    try:
        control.up(settings)
        parameters = {"SweepIntervalMinutes": str(interval_minutes), "TestDropNotificationsPrefix": "lost-"}
        outputs = deploy_stack(ROOT / "template.yaml", STACK, parameters, vendor_dependencies=False)
        s3 = boto3.client("s3")
        raw, processed = outputs["RawBucketName"], outputs["ProcessedBucketName"]
        s3.put_object(
            Bucket=outputs["ConfigBucketName"],
            Key=f"contracts/{MODEL}.yaml",
            Body=datasets.contract_yaml("iris", MODEL),
        )
        pending: dict[str, dict[str, Any]] = {}
        spacing = interval_minutes * 60 / files
        for n in range(files):
            key = f"{MODEL}/{'empty' if n == 0 else 'month'}-{n}.csv"
            body = b"" if n == 0 else datasets.noisy_iris_csv(60, seed=n)
            version = s3.put_object(Bucket=raw, Key=key, Body=body)["VersionId"]
            landed = s3.head_object(Bucket=raw, Key=key, VersionId=version)["LastModified"].timestamp()
            pending[key] = {"key": key, "version": version, "landed": landed}
            print(f"uploaded {key}", flush=True)  # noqa: T201
            time.sleep(spacing)  # spreads the landings over one interval of the schedule
        done: list[dict[str, Any]] = []
        deadline = time.time() + 3 * interval_minutes * 60 + 300
        while pending:
            if time.time() > deadline:
                raise TimeoutError(f"no outcome for {sorted(pending)}")
            for key, entry in list(pending.items()):
                statuses = _markers(s3, processed, key, entry["version"])
                if statuses and statuses[-1] in OUTCOMES:
                    # The marker is written once the outcome is: its write time is the outcome's.
                    marker = outcome_key(key, entry["version"])
                    written = s3.head_object(Bucket=processed, Key=marker)["LastModified"].timestamp()
                    done.append({**entry, "statuses": statuses, "latency": written - entry["landed"]})
                    print(f"{key}: {statuses} after {written - entry['landed']:.0f} s", flush=True)  # noqa: T201
                    del pending[key]
            time.sleep(1)
        grace = float(load_template(ROOT / "template.yaml")["Parameters"]["SweepGraceSeconds"]["Default"])
        return done, grace
    finally:
        control.down(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=int, default=1, help="SweepIntervalMinutes")
    parser.add_argument("--files", type=int, default=6)
    arguments = parser.parse_args()
    done, grace = run(arguments.interval, arguments.files)
    interval = arguments.interval * 60
    latencies = [entry["latency"] for entry in done]
    rows = "\n".join(
        f"| `{entry['key']}` | {' -> '.join(entry['statuses'])} | {entry['latency']:.0f} s |"
        for entry in sorted(done, key=lambda entry: entry["key"])
    )
    all_swept = all(entry["statuses"][0] == "requeued" for entry in done)
    command = f"uv run python benchmarks/sweep.py --interval {arguments.interval} --files {arguments.files}"
    text = (
        "# Sweep benchmark\n\n"
        f"`{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores. The stack as template.yaml "
        f"deploys it, but for `SweepIntervalMinutes` {arguments.interval} and `TestDropNotificationsPrefix` "
        "`lost-`: S3's notification of every file below was deleted before ingest saw it. The files were "
        f"uploaded one interval / {arguments.files} apart, so they landed at different points of the "
        "schedule; the sweep ran on its schedule only. Latency: from the version's LastModified (whole "
        "seconds) to its outcome marker's.\n\n"
        "| file | marks, in order | landing -> outcome |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Median {statistics.median(latencies):.0f} s, worst {max(latencies):.0f} s. The bound: the interval "
        f"plus `SweepGraceSeconds` ({interval:.0f} + {grace:.0f} = {interval + grace:.0f} s) plus ingest's "
        f"own time; the issue's target, the interval + 1 minute, is {interval + 60:.0f} s. "
        f"First mark the sweep's for every file: {'yes' if all_swept else 'NO'}.\n"
    )
    output = ROOT / "benchmarks" / "results" / "sweep.md"
    output.write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
