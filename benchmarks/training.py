"""Chain benchmark: upload -> champion promoted, with a trainer already running (warm) and with none
(cold: the reconciler starts one and the local EC2 agent boots it), for 5,000 rows and 1 M rows x 20
features. Reports medians by stage, from the timestamps the ingest Lambda and the worker record.

Starts its own local cloud on free ports with the product's default worker settings.

    uv run python benchmarks/training.py [--runs 5] [--large-runs 3] [--skip-large] [--skip-small]
        [--family lightgbm] [--search-trials 20]

With --family or --search-trials, the contract trains that family (LightGBM: 100 trees), or tunes it
with that many trials, and the results go to benchmarks/results/training_<family>[_search<N>].md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack, login_secret_name, put_login_secret  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from localcloud.tracking_login import read_login  # noqa: E402

STACK = "arrival-chain-bench"
STAGES = ["event delivery", "ingest", "boot", "queue", "train", "quiet period", "log and register", "promote"]
# `train` split: each stage's own body, as the stage times it, and what is left (DVC's hashing and lock,
# each stage command's start, writing the workspace).
TRAIN_SPLIT = ["prepare", "train stage", "evaluate", "DVC and setup"]


FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 20, "max_depth": 12},
    "lightgbm": {"n_estimators": 100},
    "xgboost": {"n_estimators": 100},
}
SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": {"low": 10, "high": 30}, "max_depth": {"low": 6, "high": 14}},
    "lightgbm": {
        "num_leaves": {"low": 15, "high": 63},
        "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
    },
    "xgboost": {"max_depth": {"low": 3, "high": 8}, "learning_rate": {"low": 0.03, "high": 0.3, "log": True}},
}


def wide_contract(model: str, family: str = "random_forest", search_trials: int = 0) -> bytes:
    """20 numeric features and a 3-class target, trained with a bounded random forest (or `family`),
    tuned with `search_trials` trials if any."""
    columns: dict[str, Any] = {f"x{index:02d}": {"type": "numeric"} for index in range(20)}
    columns["label"] = {"type": "categorical", "categories": ["a", "b", "c"]}
    training: dict[str, Any] = {
        "family": family,
        "metric": "f1_macro",
        "floor": 0.4,
        "params": FAMILY_PARAMS[family],
    }
    if search_trials:
        training["search"] = {"trials": search_trials, "space": SEARCH_SPACES[family]}
    return yaml.safe_dump(
        {
            "model": model,
            "task": "classification",
            "target": "label",
            "columns": columns,
            "limits": {"min_rows": 10, "max_file_bytes": 400 * 2**20},
            "training": training,
        }
    ).encode()


def wide_csv(rows: int, seed: int) -> bytes:
    generator = np.random.default_rng(seed)
    features = generator.normal(0, 1, (rows, 20)).round(4)
    score = features[:, 0] + 0.5 * features[:, 1] - 0.5 * features[:, 2] + generator.normal(0, 0.5, rows)
    frame = pd.DataFrame(features, columns=[f"x{index:02d}" for index in range(20)])
    frame["label"] = np.select([score < -0.5, score < 0.5], ["a", "b"], "c")
    return frame.to_csv(index=False).encode()


def _worker_processes(cloud_id: str, command: bytes = b"arrival-worker") -> list[int]:
    marker = f"ARRIVAL_CLOUD_ID={cloud_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            is_worker = proc.name.isdigit() and command in (proc / "cmdline").read_bytes()
            if is_worker and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _stage_server_peak_mb(cloud_id: str) -> float:
    """The worker's stage server's peak RSS. Counted on top of the stage's and the worker's, although
    the forked stage shares most of its pages: an upper bound."""
    peak = 0.0
    for pid in _worker_processes(cloud_id, b"worker.stage_server"):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            peak = max(peak, float(status.split("VmHWM:")[1].split()[0]) / 1024)
    return peak


class Bench:
    def __init__(
        self,
        outputs: dict[str, str],
        mlflow_url: str,
        cloud_id: str,
        family: str = "random_forest",
        trials: int = 0,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.outputs, self.cloud_id = outputs, cloud_id
        self.family, self.trials = family, trials
        self.s3, self.ec2 = boto3.client("s3"), boto3.client("ec2")
        self.mlflow = MlflowClient(mlflow_url)

    def live_trainers(self) -> list[str]:
        reservations = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:arrival:stack", "Values": [STACK]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        return [
            instance["InstanceId"] for reservation in reservations for instance in reservation["Instances"]
        ]

    def stop_trainers(self) -> None:
        """Terminate every trainer and wait until the agent has ended their processes too, so no
        dying worker takes the next run's job."""
        live = self.live_trainers()
        if live:
            self.ec2.terminate_instances(InstanceIds=live)
        while self.live_trainers() or _worker_processes(self.cloud_id):
            time.sleep(0.2)

    def champion(self, model: str) -> Any:
        try:
            return self.mlflow.get_model_version_by_alias(model, "champion")
        except Exception:
            return None

    def one_run(self, rows: int, seed: int) -> dict[str, float]:
        model = f"bench-{uuid.uuid4().hex[:8]}"
        self.s3.put_object(
            Bucket=self.outputs["ConfigBucketName"],
            Key=f"contracts/{model}.yaml",
            Body=wide_contract(model, self.family, self.trials),
        )
        body = wide_csv(rows, seed)
        uploaded = time.time()
        self.s3.put_object(Bucket=self.outputs["RawBucketName"], Key=f"{model}/data.csv", Body=body)
        while (champion := self.champion(model)) is None:
            if time.time() - uploaded > 3600:
                raise TimeoutError(model)
            time.sleep(0.2)
        promoted = time.time()
        while self.mlflow.get_run(champion.run_id).info.status != "FINISHED":  # the last timings land
            time.sleep(0.2)
        metrics = self.mlflow.get_run(champion.run_id).data.metrics
        accepted = json.loads(
            self.s3.get_object(Bucket=self.outputs["ProcessedBucketName"], Key=f"{model}/accepted.json")[
                "Body"
            ].read()
        )["datasets"][0]
        started_work = max(accepted["accepted_at"], metrics["timing.worker_started_at"])
        trained_until = metrics["timing.training_started_at"] + metrics["timing.repro_seconds"]
        return {
            "total": promoted - uploaded,
            "event delivery": accepted["ingest_started_at"] - uploaded,
            "ingest": accepted["accepted_at"] - accepted["ingest_started_at"],
            "boot": max(0.0, metrics["timing.worker_started_at"] - accepted["accepted_at"]),
            "queue": metrics["timing.job_received_at"] - started_work,
            "train": trained_until - metrics["timing.job_received_at"],
            # What is left of the quiet period once the pipeline is done (it runs alongside).
            "quiet period": metrics["timing.settled_at"] - trained_until,
            "log and register": metrics["timing.registered_at"] - metrics["timing.settled_at"],
            "promote": metrics["timing.decided_at"] - metrics["timing.registered_at"],
            "fit alone": metrics["train.fit_seconds"],
            "prepare": metrics["timing.stage.prepare_seconds"],
            "train stage": metrics["timing.stage.train_seconds"],
            "evaluate": metrics["timing.stage.evaluate_seconds"],
            "DVC and setup": trained_until
            - metrics["timing.job_received_at"]
            - sum(metrics[f"timing.stage.{stage}_seconds"] for stage in ("prepare", "train", "evaluate")),
            # With a search: its trials' own fits (each on the training rows outside the tuning split).
            "trial fits": _trial_seconds(self.mlflow, champion.run_id),
            "fit peak MB": metrics["train.peak_rss_mb"],
            "worker peak MB": metrics["worker.peak_rss_mb"],
            "stage server peak MB": _stage_server_peak_mb(self.cloud_id),
        }


def _trial_seconds(mlflow: Any, run_id: str) -> float:
    experiment = mlflow.get_run(run_id).info.experiment_id
    children = mlflow.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run_id}'")
    return float(sum(child.data.metrics.get("tuning.seconds", 0.0) for child in children))


def _row(label: str, runs: list[dict[str, float]]) -> str:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    stages = " | ".join(f"{median[stage]:.2f}" for stage in STAGES)
    split = " | ".join(f"{median[stage]:.2f}" for stage in TRAIN_SPLIT)
    ratio = median["total"] / median["fit alone"]
    peak = max(run["fit peak MB"] + run["worker peak MB"] + run["stage server peak MB"] for run in runs)
    # A search's measure: the whole chain against the bare fits it is made of (each trial's own fit, and
    # the final fit), so what the search, MLflow and DVC add shows as the ratio.
    fits = median["trial fits"] + median["fit alone"]
    searched = (
        f" {median['trial fits']:.2f} | {median['total'] / fits:.1f}x |" if median["trial fits"] else ""
    )
    return (
        f"| {label} | {len(runs)} | **{median['total']:.2f}** | {stages} | {median['fit alone']:.2f} | "
        f"{ratio:.1f}x | {peak:.0f} | {split} |{searched}"
    )


def point_sdks_at(settings: LocalCloudSettings, **extra: str) -> None:
    """The AWS SDK and MLflow of this process, and of every service it starts, at the local cloud."""
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(
        AWS_ENDPOINT_URL=settings.aws_endpoint_url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106  # LocalStack accepts any credentials
        AWS_DEFAULT_REGION=settings.region,
        MLFLOW_TRACKING_URI=settings.mlflow_url,
        **extra,
    )


def log_in_to_mlflow(settings: LocalCloudSettings, stack: str = STACK) -> dict[str, str]:
    """The cloud's MLflow login for this process's clients, and in the stack's secret for its
    trainers, as `arrival deploy` does (docs/local-cloud.md); the stack parameter naming it. (The
    serving benchmark logs in with it too.)"""
    login = read_login(settings.state_dir)
    assert login is not None, "the local cloud's tracking server makes its login when it starts"
    os.environ.update(MLFLOW_TRACKING_USERNAME=login.username, MLFLOW_TRACKING_PASSWORD=login.password)
    secret = put_login_secret(login_secret_name(stack), login.username, login.password)
    return {"MlflowLoginSecretArn": secret}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--large-runs", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--family", default="random_forest", choices=sorted(FAMILY_PARAMS))
    parser.add_argument("--search-trials", type=int, default=0)
    arguments = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="arrival-chain-bench-"))
    settings = LocalCloudSettings(state_dir=state, aws_port=free_port(), mlflow_port=free_port())
    point_sdks_at(settings, ARRIVAL_WORKER_IDLE_SECONDS="3600")  # warm runs find the trainer still up
    control.up(settings)
    rows: list[str] = []
    try:
        outputs = deploy_stack(
            ROOT / "template.yaml",
            STACK,
            {
                "IngestTimeoutSeconds": "900",
                "IngestVisibilityTimeoutSeconds": "960",
                **log_in_to_mlflow(settings),
            },
            vendor_dependencies=False,
        )
        bench = Bench(
            outputs, settings.mlflow_url, settings.cloud_id, arguments.family, arguments.search_trials
        )
        cases = [] if arguments.skip_small else [("5,000 rows", 5_000, arguments.runs)]
        if not arguments.skip_large:
            cases.append(("1 M rows x 20", 1_000_000, arguments.large_runs))
        for label, size, runs in cases:
            for mode in ("cold", "warm"):
                results = []
                for run in range(runs):
                    if mode == "cold":
                        bench.stop_trainers()
                    elif run == 0 and not bench.live_trainers():
                        bench.one_run(size, seed=999)  # bring a trainer up (not measured)
                    results.append(bench.one_run(size, seed=run))
                    print(label, mode, {k: round(v, 2) for k, v in results[-1].items()}, flush=True)  # noqa: T201
                rows.append(_row(f"{label}, {mode} trainer", results))
                _write(rows, arguments)  # after every case, so a stopped run keeps what it measured
    finally:
        control.down(settings)


def _write(rows: list[str], arguments: argparse.Namespace) -> None:
    variant = ""
    if arguments.family != "random_forest" or arguments.search_trials:
        variant = f"_{arguments.family}" + (
            f"_search{arguments.search_trials}" if arguments.search_trials else ""
        )
    if arguments.skip_large and variant == "":  # the 5,000-row chain alone: its own file
        variant = "_5000_rows"
    command = " ".join(sys.argv[1:])
    searched = (
        f"Each training tunes the contract's {arguments.family} with {arguments.search_trials} trials "
        "(training.search): `trial fits` is the trials' own fits added up, and `total / fits` the whole "
        "chain against those fits and the final one. "
        if arguments.search_trials
        else ""
    )
    header = (
        f"# Chain benchmark: upload -> champion ({arguments.family})\n\n"
        f"`uv run python benchmarks/training.py {command}` "
        f"on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, default worker settings "
        "(quiet period 2 s, counted from the last file's acceptance and run alongside the training: "
        "`quiet period` is what was left of it once the DVC pipeline was done). "
        "A new model each run, so each promotion is a first champion. Medians in seconds; stages from "
        "the timestamps the ingest Lambda and the worker record. `boot` is 0 for a warm trainer; for a cold "
        "one it runs from acceptance to the worker process starting (reconciler, RunInstances, the agent "
        "booting it); for a cold one, `queue` also holds the worker loading its training code (MLflow, DVC, "
        "pandas) once it has the job, while its stage server loads the stages' libraries alongside. "
        "`train` runs from the job's receipt to the end of the DVC pipeline (prepare, train, "
        "evaluate); `log and register` includes `dvc push`. Peak memory: "
        "the fit stage's process plus the worker's plus its stage server's, each at its peak (they run at "
        "the same time; the fit stage is forked from the server and shares most of its pages, so this is "
        f"an upper bound). `train:` splits `train` into each stage's own body, as the stage times it "
        "(`train stage` holds the fit), and `DVC and setup`, the rest: writing the workspace, DVC's "
        f"hashing and lock, each stage command's start. {searched}\n\n"
        f"| case | runs | total | {' | '.join(STAGES)} | fit alone | total / fit | peak MB | "
        f"train: {' | '.join(TRAIN_SPLIT)} |"
        f"{' trial fits | total / fits |' if arguments.search_trials else ''}\n"
        f"|---|---|---|{'---|' * len(STAGES)}---|---|---|{'---|' * len(TRAIN_SPLIT)}"
        f"{'---|---|' if arguments.search_trials else ''}\n"
    )
    output = ROOT / "benchmarks" / "results" / f"training{variant}.md"
    output.write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {output}")  # noqa: T201


if __name__ == "__main__":
    main()
