"""Batch benchmark: 1 M rows x 20 numeric features scored by the batch Lambda, as LocalStack runs it,
from the upload of the CSV to its predictions file appearing, for a logistic regression bundle and a
100-tree random forest bundle.

Starts its own local cloud (free ports, temporary state), deploys the stack with template.yaml's
defaults (the batch function's memory and timeout are the production ones), puts two contracts and
two serving bundles built directly (fitted here as the trainer fits them, exported to ONNX, checked by
the loader as serving checks them), then uploads the same file REPEATS times per model under
`<model>/input/`. Reads each run's manifest and the Lambda's REPORT line (Duration, Max Memory Used)
from CloudWatch Logs. Writes benchmarks/results/batch.md, whose linear rate docs/batch.md sizes the
function's file limit with.

    uv run python benchmarks/batch.py [--repeats 3] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
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

from common.contracts import DataContract  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack, load_template  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import serving_bundles  # noqa: E402
from worker.onnx_export import to_onnx_bytes  # noqa: E402
from worker.training import build_model, features_of  # noqa: E402

STACK = "arrival-bench-batch"
FEATURES = [f"f{i:02d}" for i in range(1, 21)]
CLASSES = ["a", "b", "c"]
FAMILIES = {"linear": "logistic regression", "random_forest": "random forest, 100 trees"}
REPORT = re.compile(r"REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms.*Max Memory Used: (\d+) MB")
TRAINING_ROWS = 20_000


def contract_yaml(model: str, family: str) -> str:
    document = {
        "model": model,
        "task": "classification",
        "target": "label",
        "columns": {
            **{name: {"type": "numeric", "min": -100, "max": 100} for name in FEATURES},
            "label": {"type": "categorical", "categories": CLASSES},
        },
        "limits": {"min_rows": 10},
        "training": {"family": family, "metric": "f1_macro"},
    }
    return json.dumps(document)  # YAML is a superset of JSON


def frame(rows: int, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    values = generator.normal(0, 3, (rows, len(FEATURES))).round(4)
    data = pd.DataFrame(values, columns=FEATURES)
    labels = (values[:, 0] + values[:, 1] > 0).astype(int) + (values[:, 2] > 2)
    data["label"] = np.array(CLASSES)[labels]
    return data


def publish_bundle(s3: Any, bucket: str, model: str, family: str) -> None:
    contract = DataContract.model_validate(json.loads(contract_yaml(model, family)))
    training = frame(TRAINING_ROWS, seed=1)
    # The trainer's own defaults (100 trees for the forest), one job: the bundle is what matters.
    pipeline = build_model(contract, {"n_jobs": 1} if family == "random_forest" else {})
    pipeline.fit(features_of(training, contract), training["label"])
    trained = serving_bundles.Trained(contract, pipeline, to_onnx_bytes(pipeline, contract), training)
    serving_bundles.publish(s3, trained, "1", bucket=bucket)


def _object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError:
        return False
    return True


def _report(logs: Any, group: str, seen: set[str], at_least_ms: float) -> tuple[float, int]:
    """The REPORT line of the invocation that scored the file: the function is also invoked for its
    own outputs (ignored in milliseconds), so the one at least as long as the manifest's total."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            found = logs.filter_log_events(logGroupName=group).get("events", [])
        except logs.exceptions.ResourceNotFoundException:  # logs land just after the result
            found = []
        for event in found:
            match = REPORT.search(event["message"])
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                if float(match.group(2)) >= at_least_ms:
                    return float(match.group(2)) / 1000, int(match.group(3))
        time.sleep(0.5)
    raise TimeoutError("no REPORT line for the scoring invocation")


def run(repeats: int, rows: int) -> list[str]:
    state = Path(tempfile.mkdtemp(prefix="arrival-bench-"))
    settings = LocalCloudSettings(
        state_dir=state, aws_port=free_port(), mlflow_port=free_port(), agent_roles=[]
    )
    os.environ.update(
        AWS_ENDPOINT_URL=settings.aws_endpoint_url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106  # LocalStack accepts any credentials
        AWS_DEFAULT_REGION=settings.region,
    )
    source = state / "bench.csv"
    started = time.monotonic()
    frame(rows, seed=2)[FEATURES].to_csv(source, index=False)
    print(f"wrote {rows:,} rows ({source.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s")  # noqa: T201
    control.up(settings)
    try:
        outputs = deploy_stack(ROOT / "template.yaml", STACK, {}, vendor_dependencies=False)
        s3, logs = boto3.client("s3"), boto3.client("logs")
        bucket = outputs["InferenceBucketName"]
        group = f"/aws/lambda/{outputs['BatchFunctionName']}"
        seen: set[str] = set()
        lines = []
        walls_by_family: dict[str, float] = {}
        for family, label in FAMILIES.items():
            model = f"bench-{family.replace('_', '-')}"
            s3.put_object(
                Bucket=outputs["ConfigBucketName"],
                Key=f"contracts/{model}.yaml",
                Body=contract_yaml(model, family),
            )
            publish_bundle(s3, outputs["ModelsBucketName"], model, family)
            # A small file first: the function's first start (its virtualenv, the bundle's load) is not
            # what a file of a million rows costs.
            s3.put_object(
                Bucket=bucket,
                Key=f"{model}/input/warm-up.csv",
                Body=frame(100, 3)[FEATURES].to_csv(index=False),
            )
            deadline = time.monotonic() + 900
            while not _object_exists(s3, bucket, f"{model}/output/warm-up.manifest.json"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the warm-up file was not scored")
                time.sleep(0.5)
            walls, durations, memories, manifests = [], [], [], []
            for run_number in range(1, repeats + 1):
                name = f"run-{run_number}"
                started = time.monotonic()
                s3.upload_file(str(source), bucket, f"{model}/input/{name}.csv")
                while not _object_exists(s3, bucket, f"{model}/output/{name}.predictions.parquet"):
                    if time.monotonic() - started > 900:
                        raise TimeoutError(f"{model} {name} gave no predictions within 900 s")
                    time.sleep(0.1)
                walls.append(time.monotonic() - started)
                key = f"{model}/output/{name}.manifest.json"
                while not _object_exists(s3, bucket, key):
                    time.sleep(0.1)
                manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                assert manifest["rows"]["scored"] == rows, manifest["rows"]
                manifests.append(manifest["timings"])
                duration, memory = _report(logs, group, seen, manifest["timings"]["total_seconds"] * 1000)
                durations.append(duration)
                memories.append(memory)
                print(f"{model} {name}: {walls[-1]:.1f} s wall, {duration:.1f} s in Lambda", flush=True)  # noqa: T201
            load = os.getloadavg()[0]
            wall, duration = statistics.median(walls), statistics.median(durations)
            phases = {
                phase: statistics.median(timing[f"{phase}_seconds"] for timing in manifests)
                for phase in ("download", "score", "upload")
            }
            walls_by_family[family] = wall
            lines.append(
                f"| {label} | {wall:.1f} s | {rows / wall / 1000:.0f}k | {duration:.1f} s | "
                f"{rows / duration / 1000:.0f}k | {phases['download']:.1f} / {phases['score']:.1f} / "
                f"{phases['upload']:.1f} s | {max(memories)} MB | {load:.1f} |"
            )
            print(lines[-1], flush=True)  # noqa: T201
        size = source.stat().st_size / 1e6
        ratio = walls_by_family["random_forest"] / walls_by_family["linear"]
        lines.append(
            f"\nIn this run the forest took {ratio:.1f}x the logistic regression's time, "
            "upload to predictions."
        )
        return [f"{size:.0f}", *lines]
    finally:
        control.down(settings)


def _template_defaults() -> str:
    parameters = load_template(ROOT / "template.yaml")["Parameters"]
    return ", ".join(
        f"{name} {parameters[name]['Default']}"
        for name in ["BatchMemorySize", "BatchTimeoutSeconds", "BatchMaxFileBytes"]
        if name in parameters
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    arguments = parser.parse_args()
    size, *lines = run(arguments.repeats, arguments.rows)
    header = (
        "# Batch benchmark\n\n"
        f"`uv run python benchmarks/batch.py --repeats {arguments.repeats} --rows {arguments.rows}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores (shared with other work). One CSV of "
        f"{arguments.rows:,} rows x {len(FEATURES)} numeric features ({size} MB), uploaded under "
        "`<model>/input/` of the stack as template.yaml deploys it by default "
        f"({_template_defaults()}), run by LocalStack through arrival's process executor, scored by a "
        "bundle fitted on 20,000 rows with the trainer's defaults. Medians of the repeats, after one "
        "small warm-up file per model; memory is the highest `Max Memory Used`.\n\n"
        "- *upload -> predictions*: from the start of the upload to the predictions file's appearance;\n"
        "- *Lambda*: the invocation's `Duration` (REPORT line);\n"
        "- *phases*: the manifest's download / validate+score+write / upload of the results;\n"
        "- *load*: the machine's 1-minute load average after the runs (2 cores; other work shares them).\n\n"
        "| bundle | upload -> predictions | rows/s | Lambda | rows/s (Lambda) | phases | peak memory "
        "| load |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    output = ROOT / "benchmarks" / "results" / "batch.md"
    output.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {output}")  # noqa: T201


if __name__ == "__main__":
    main()
