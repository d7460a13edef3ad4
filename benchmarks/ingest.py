"""Ingest benchmark: time and peak memory of the ingest Lambda, as LocalStack runs it, for a
5,000-row file, a 1 M-row file and a 200 MB file.

Starts its own local cloud (free port, temporary state), deploys the stack with template.yaml's
defaults (no parameter changed: the ingest timeout, batch size and memory are the production ones,
so a file that outlasts the timeout shows up here), uploads each file REPEATS times under fresh
content with the example iris contract's limits, and reads the Lambda's REPORT lines (Duration, Max
Memory Used) from CloudWatch Logs. Writes benchmarks/results/ingest.md, whose largest file's rate
tests/unit/test_ingest_batch_sizing.py checks the template's timeout against.

    uv run python benchmarks/ingest.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack, load_template  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import datasets  # noqa: E402

STACK = "arrival-bench"
MODEL = "bench-iris"
REPORT = re.compile(r"REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms.*Max Memory Used: (\d+) MB")


def iris_csv(rows: int, seed: int) -> bytes:
    generator = np.random.default_rng(seed)
    frame = datasets.iris_frame(min(rows, 1000), seed)
    numeric = generator.uniform(0.1, 9.9, (rows, 4)).round(3)
    big = pd.DataFrame(numeric, columns=list(frame.columns[:4]))
    big["species"] = generator.choice(datasets.SPECIES, rows)
    buffer = io.StringIO()
    big.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def csv_of_size(target_bytes: int, seed: int) -> bytes:
    per_row = len(iris_csv(10_000, seed)) / 10_000
    return iris_csv(int(target_bytes / per_row), seed)


def accepted_count(s3: Any, bucket: str) -> int:
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{MODEL}/accepted.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    import json

    return len(json.loads(body)["datasets"])


def run(repeats: int) -> str:
    state = Path(tempfile.mkdtemp(prefix="arrival-bench-"))
    # Trainer instances are recorded but not booted: this measures ingest alone, not ingest
    # competing with training for the same two cores.
    settings = LocalCloudSettings(
        state_dir=state, aws_port=free_port(), mlflow_port=free_port(), agent_roles=[]
    )
    os.environ.update(
        AWS_ENDPOINT_URL=settings.aws_endpoint_url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106  # LocalStack accepts any credentials
        AWS_DEFAULT_REGION=settings.region,
    )
    control.up(settings)
    try:
        outputs = deploy_stack(ROOT / "template.yaml", STACK, {}, vendor_dependencies=False)
        s3, logs = boto3.client("s3"), boto3.client("logs")
        s3.put_object(
            Bucket=outputs["ConfigBucketName"],
            Key=f"contracts/{MODEL}.yaml",
            Body=datasets.contract_yaml("iris", MODEL),
        )
        cases = {
            "5,000 rows": lambda seed: iris_csv(5_000, seed),
            "1 M rows": lambda seed: iris_csv(1_000_000, seed),
            "200 MB": lambda seed: csv_of_size(200 * 10**6, seed),
        }
        group = f"/aws/lambda/{outputs['IngestFunctionName']}"
        rows = []
        seen_requests: set[str] = set()
        seed = 0
        for name, make in cases.items():
            durations, memories, walls = [], [], []
            for _ in range(repeats):
                seed += 1
                body = make(seed)
                expected = accepted_count(s3, outputs["ProcessedBucketName"]) + 1
                started = time.monotonic()
                s3.put_object(Bucket=outputs["RawBucketName"], Key=f"{MODEL}/{name}-{seed}.csv", Body=body)
                while accepted_count(s3, outputs["ProcessedBucketName"]) < expected:
                    if time.monotonic() - started > 900:
                        raise TimeoutError(f"{name} was not accepted within 900 s")
                    time.sleep(0.2)
                walls.append(time.monotonic() - started)
                report = None
                while report is None:
                    try:
                        found = logs.filter_log_events(logGroupName=group).get("events", [])
                    except logs.exceptions.ResourceNotFoundException:  # logs land just after the result
                        found = []
                    time.sleep(0.2)
                    for event in found:
                        match = REPORT.search(event["message"])
                        if match and match.group(1) not in seen_requests:
                            seen_requests.add(match.group(1))
                            report = match
                durations.append(float(report.group(2)) / 1000)
                memories.append(int(report.group(3)))
            size = len(body) / 10**6
            rows.append(
                f"| {name} | {size:.1f} MB | {statistics.median(walls):.2f} s | "
                f"{statistics.median(durations):.2f} s | {max(memories)} MB |"
            )
            print(rows[-1], flush=True)  # noqa: T201
        return "\n".join(rows)
    finally:
        control.down(settings)


def _template_defaults() -> str:
    parameters = load_template(ROOT / "template.yaml")["Parameters"]
    return ", ".join(
        f"{name} {parameters[name]['Default']}"
        for name in ["IngestMemorySize", "IngestTimeoutSeconds", "IngestBatchSize"]
        if name in parameters
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    table = run(arguments.repeats)
    header = (
        "# Ingest benchmark\n\n"
        f"`uv run python benchmarks/ingest.py --repeats {arguments.repeats}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores. The stack as template.yaml deploys it by default ({_template_defaults()}), "
        "run by LocalStack through arrival's process executor. Medians of the repeats; memory is the highest "
        "`Max Memory Used` (peak RSS of the function's process) over the repeats.\n\n"
        "| file | size | upload -> accepted (wall) | Lambda duration | peak memory |\n"
        "|---|---|---|---|---|\n"
    )
    output = ROOT / "benchmarks" / "results" / "ingest.md"
    output.write_text(header + table + "\n")
    print(f"wrote {output}")  # noqa: T201


if __name__ == "__main__":
    main()
