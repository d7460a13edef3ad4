"""20 models, one file each, uploaded at once: the makespan (first upload -> last model's champion) with
MaxTrainers 4 against MaxTrainers 1, side by side in one local cloud.

    uv run python benchmarks/many_models.py [--models 20] [--rounds 2]

Each round runs both stacks one after the other (their order alternating between rounds), each with
its trainers stopped first, so each starts cold as a morning's uploads would; the stacks never run at
the same time. Writes benchmarks/results/many_models.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.training import log_in_to_mlflow, point_sdks_at  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import datasets  # noqa: E402

STACKS = {1: "arrival-many-1", 4: "arrival-many-4"}


class Stack:
    def __init__(self, name: str, outputs: dict[str, str], mlflow_url: str) -> None:
        from mlflow.tracking import MlflowClient

        self.name, self.outputs = name, outputs
        self.s3, self.ec2 = boto3.client("s3"), boto3.client("ec2")
        self.mlflow = MlflowClient(mlflow_url)

    def live_trainers(self) -> list[str]:
        reservations = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:arrival:stack", "Values": [self.name]},
                {"Name": "tag:arrival:role", "Values": ["trainer"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        return [
            instance["InstanceId"] for reservation in reservations for instance in reservation["Instances"]
        ]

    def stop_trainers(self) -> None:
        if live := self.live_trainers():
            self.ec2.terminate_instances(InstanceIds=live)
        deadline = time.monotonic() + 120
        while self.live_trainers():
            if time.monotonic() > deadline:
                raise TimeoutError("trainers still live")
            time.sleep(0.2)

    def promoted(self, model: str) -> bool:
        try:
            self.mlflow.get_model_version_by_alias(model, "champion")
        except Exception:
            return False
        return True

    def run(self, models: int) -> dict[str, Any]:
        names = [f"many-{uuid.uuid4().hex[:6]}-{index}" for index in range(models)]
        for name in names:
            self.s3.put_object(
                Bucket=self.outputs["ConfigBucketName"],
                Key=f"contracts/{name}.yaml",
                Body=datasets.contract_yaml("iris", name),
            )
        bodies = [datasets.noisy_iris_csv(5_000, seed=index) for index in range(models)]
        started = time.time()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda index: self.s3.put_object(
                        Bucket=self.outputs["RawBucketName"],
                        Key=f"{names[index]}/data.csv",
                        Body=bodies[index],
                    ),
                    range(models),
                )
            )
        waiting, most_trainers = set(names), 0
        while waiting:
            if time.time() - started > 1800:
                raise TimeoutError(f"{len(waiting)} models never promoted")
            waiting = {name for name in waiting if not self.promoted(name)}
            most_trainers = max(most_trainers, len(self.live_trainers()))
            time.sleep(0.5)
        return {"makespan": time.time() - started, "trainers": most_trainers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="arrival-many-bench-"))
    settings = LocalCloudSettings(state_dir=state, aws_port=free_port(), mlflow_port=free_port())
    point_sdks_at(settings)
    control.up(settings)
    results: dict[int, list[dict[str, Any]]] = {1: [], 4: []}
    try:
        stacks = {}
        for limit, name in STACKS.items():
            outputs = deploy_stack(
                ROOT / "template.yaml",
                name,
                {"MaxTrainers": str(limit), **log_in_to_mlflow(settings, name)},
                vendor_dependencies=False,
            )
            stacks[limit] = Stack(name, outputs, settings.mlflow_url)
        for round_ in range(arguments.rounds):
            for limit in (1, 4) if round_ % 2 == 0 else (4, 1):
                stacks[limit].stop_trainers()
                results[limit].append(stacks[limit].run(arguments.models))
                print(limit, results[limit][-1], flush=True)  # noqa: T201
                stacks[limit].stop_trainers()
    finally:
        control.down(settings)
    _write(results, arguments)


def _write(results: dict[int, list[dict[str, Any]]], arguments: argparse.Namespace) -> None:
    median = {limit: statistics.median(run["makespan"] for run in runs) for limit, runs in results.items()}
    rows = []
    for limit, runs in results.items():
        makespans = ", ".join(f"{run['makespan']:.1f}" for run in runs)
        most = max(run["trainers"] for run in runs)
        rows.append(f"| {limit} | {len(runs)} | {makespans} | **{median[limit]:.1f}** | {most} |")
    text = (
        "# Many models at once: makespan by MaxTrainers\n\n"
        f"`uv run python benchmarks/many_models.py --models {arguments.models} --rounds {arguments.rounds}` "
        f"on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores. {arguments.models} models (iris contracts, "
        "5,000 rows each), one file each uploaded at once; makespan runs from the first upload to the last "
        "model's champion, trainers stopped before each run (a cold start, as a morning's uploads meet). "
        "Both stacks in one local cloud, run one after the other, alternating which goes first.\n\n"
        "| MaxTrainers | runs | makespans (s) | median (s) | most trainers at once |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        f"Ratio, MaxTrainers 4 against 1: **{median[4] / median[1]:.2f}x** (target 0.6x); "
        f"last model's champion with 4 trainers: {median[4]:.1f} s (target 60 s).\n"
    )
    output = ROOT / "benchmarks" / "results" / "many_models.md"
    output.write_text(text)
    print(f"wrote {output}")  # noqa: T201


if __name__ == "__main__":
    main()
