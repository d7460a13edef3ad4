"""Serving benchmark: arrival's model server against `mlflow models serve` on the same registered version
and against a FastAPI hello world, for a 100-tree random forest and a logistic regression on 20
numeric features; then a batch of 1,000 records, reloads under load, promotion -> new version
answering, the server's memory, the Lambda behind API Gateway, the Lambda package's size, and the
cost of the API key check (the server with it and without it, side by side).

Starts its own local cloud (free ports, temporary state), deploys the stack, fits both models in
process with the trainer's code, logs and registers them to the cloud's MLflow server with the
trainer's call, and publishes their serving bundles and pointers as the trainer does. The server
measured is the stack's EC2 serving instance, as the local EC2 agent boots it (`arrival-serve`).
Servers are measured one at a time, with wrk (Debian/Ubuntu package `wrk`) on one thread. Rewrites
benchmarks/results/serving.md after every section, so an interrupted run keeps what it measured.

    uv run python benchmarks/serving.py [--seconds 10] [--repeats 3] [--reload-seconds 30]
    uv run python benchmarks/serving.py --sections 8 --results benchmarks/results/serving_api_key.md

Every request to the stack's API carries the stack's API key (read from its secret after the deploy,
and passed to wrk through ARRIVAL_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.training import log_in_to_mlflow, point_sdks_at  # noqa: E402
from common.adapters import events, s3  # noqa: E402
from common.bundles import Lineage, ServingPointer, bundle_manifest_key, pointer_key  # noqa: E402
from common.contracts import DataContract, parse_contract  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack  # noqa: E402
from localcloud.processes import free_port, marked_processes, port_is_listening, process_tree  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from serving.settings import ServingSettings  # noqa: E402
from worker import serving_bundle  # noqa: E402

STACK = "arrival-serving-bench"
POLL_SECONDS = float(ServingSettings.model_fields["poll_seconds"].default)
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
LUA = ROOT / "benchmarks" / "serving.lua"
BIN = Path(sys.executable).parent  # the project's virtualenv: mlflow, uvicorn, arrival-serve
FEATURES = [f"x{index:02d}" for index in range(20)]
MODELS = {"bench-forest": "random_forest", "bench-linear": "linear"}  # 100 trees: build_model's default
FOREST = "bench-forest"
ROWS, BATCH = 5_000, 1_000
BATCH_ROUNDS = 3
JSON_HEADERS = {"content-type": "application/json"}


def key_headers() -> dict[str, str]:
    """The stack's API key, which main() puts in ARRIVAL_API_KEY once the stack is deployed."""
    return {"x-api-key": os.environ["ARRIVAL_API_KEY"]}


def json_headers() -> dict[str, str]:
    return {**JSON_HEADERS, **key_headers()}


CONNECTIONS = (1, 16)
TICKS = os.sysconf("SC_CLK_TCK")
# Over this much CPU used by the rest of the machine (the idle local cloud takes about 0.1), a run is
# measured again: other programs on a 2-core machine would be measured too.
NOISY_CORES = 0.3
# Lambda's python3.12 runtime ships these; a package need not carry them.
RUNTIME_PROVIDED = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "python_dateutil",
    "six",
    "urllib3",
)


def paragraph(text: str, **values: Any) -> str:
    """A wrapped, indented paragraph in this file -> one markdown line."""
    return " ".join(text.format(**values).split())


def median(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def verdict(measured: float, target: float, *, at_least: bool) -> str:
    if (measured >= target) if at_least else (measured <= target):
        return "met"
    return f"**missed** by {abs(measured / target - 1) * 100:.0f}%"


def contract_yaml(model: str, family: str) -> bytes:
    columns: dict[str, Any] = {name: {"type": "numeric"} for name in FEATURES}
    columns["label"] = {"type": "categorical", "categories": ["a", "b", "c"]}
    training = {"family": family, "metric": "f1_macro", "floor": 0.4}
    document = {
        "model": model,
        "task": "classification",
        "target": "label",
        "columns": columns,
        "training": training,
    }
    return yaml.safe_dump(document).encode()


def wide_frame(rows: int, seed: int) -> pd.DataFrame:
    """20 numeric features and a 3-class target (benchmarks/training.py's data)."""
    generator = np.random.default_rng(seed)
    features = generator.normal(0, 1, (rows, 20)).round(4)
    score = features[:, 0] + 0.5 * features[:, 1] - 0.5 * features[:, 2] + generator.normal(0, 0.5, rows)
    frame = pd.DataFrame(features, columns=FEATURES)
    frame["label"] = np.select([score < -0.5, score < 0.5], ["a", "b"], "c")
    return frame


def point_serving_at(bucket: str, model: str, version: str, reason: str = "benchmark") -> None:
    """A serving pointer as the champion's lifecycle writes it (common/champion.py), for servers
    measured without a registry: serving reads nothing else of it."""
    pointer = ServingPointer(
        model=model,
        version=version,
        manifest_key=bundle_manifest_key(model, version),
        promoted_at="2026-12-07T00:00:00Z",
        reason=reason,
    )
    s3.put_bytes(bucket, pointer_key(model), pointer.model_dump_json().encode())


@dataclass
class Fitted:
    name: str
    contract: DataContract
    pipeline: Any
    onnx: bytes
    check: dict[str, Any]
    metrics: dict[str, float]
    run_id: str
    registered: str  # the MLflow model version
    records: list[dict[str, float]]  # request records; the first is the single-record body

    @property
    def record_body(self) -> bytes:
        return json.dumps(self.records[0]).encode()

    @property
    def mlflow_body(self) -> bytes:
        return json.dumps({"dataframe_records": [self.records[0]]}).encode()

    @property
    def batch_body(self) -> bytes:
        return json.dumps({"records": self.records[:BATCH]}).encode()


def fit_for_serving(name: str, family: str, seed: int) -> Fitted:
    """Fitted, exported and checked as the trainer's stages do (`worker.onnx_export.export`: the ONNX
    export, its parity with scikit-learn on the holdout, the bundle's check rows), refused if the gate
    would call it not servable. Not registered: `run_id` and `registered` stay empty."""
    from worker import training
    from worker.onnx_export import export

    contract = parse_contract(contract_yaml(name, family))
    frame = wide_frame(ROWS, seed)
    in_holdout = training.holdout_mask(frame, 0.2)
    train, holdout = frame[~in_holdout], frame[in_holdout]
    pipeline = training.build_model(contract)
    pipeline.fit(training.features_of(train, contract), train[contract.target])
    features = training.features_of(holdout, contract)
    metrics = training.score(contract, holdout[contract.target], pipeline.predict(features))
    exported = export(pipeline, holdout, features, contract)
    if exported.problem is not None:
        raise RuntimeError(f"{name} ({family}) is not servable: {exported.problem}")
    metrics.update(exported.parity)
    # Through JSON, as the evaluate stage writes it: plain lists and strings.
    check = json.loads(json.dumps(exported.check, default=str))
    records = [
        {key: float(value) for key, value in row.items()} for row in frame[FEATURES].to_dict("records")
    ]
    return Fitted(name, contract, pipeline, exported.onnx_bytes, check, metrics, "", "", records)


def fit_and_register(name: str, family: str, seed: int) -> Fitted:
    """fit_for_serving's model, logged and registered with the trainer's calls."""
    from common.adapters import tracking

    fitted = fit_for_serving(name, family, seed)
    run_id = tracking.start_run(name, {"benchmark": "serving"})
    tracking.log_run(run_id, metrics=fitted.metrics)
    features = pd.DataFrame(fitted.records[:5])
    registered = tracking.log_and_register_model(
        run_id, name, fitted.pipeline, features, {"benchmark": "serving"}
    )
    tracking.end_run(run_id)
    tracking.move_champion(name, registered)
    return dataclasses.replace(fitted, run_id=run_id, registered=registered)


def publish_fitted(bucket: str, fitted: Fitted, version: str) -> None:
    """The fitted model's serving bundle under `version`, as the trainer's publish stage writes it."""
    lineage = Lineage(
        run_id=fitted.run_id or "benchmark",
        sources=["benchmark:synthetic"],
        content_hashes=[],
        accepted_list_hash="",
        contract_hash=fitted.contract.content_hash,
    )
    manifest = serving_bundle.build_manifest(
        fitted.contract, version, fitted.onnx, fitted.check, fitted.metrics, lineage
    )
    serving_bundle.publish_bundle(bucket, manifest, fitted.onnx)


def publish_champion(bucket: str, name: str, family: str, seed: int = 1) -> Fitted:
    """A model fitted for serving (fit_for_serving), published as version 1 with the serving pointer at
    it: what a server measured without a registry loads."""
    fitted = fit_for_serving(name, family, seed)
    publish_fitted(bucket, fitted, "1")
    point_serving_at(bucket, name, "1")
    return fitted


@contextlib.contextmanager
def s3_stand_in(*buckets: str) -> Iterator[None]:
    """moto's S3 server in this process on a free port, holding these buckets, for servers measured
    without the local cloud: the SDKs pointed at it through AWS_* in os.environ (which the servers
    started inside inherit), and a new API key in ARRIVAL_API_KEY (the servers require one; wrk sends
    it, benchmarks/serving.lua)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "ARRIVAL_API_KEY": secrets.token_urlsafe(30),
            }
        )
        client = boto3.client("s3")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield
    finally:
        moto.stop()


def arrival_serve_env(port: int, models_bucket: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `arrival-serve` on 127.0.0.1:`port` that serves `models_bucket`'s
    champions and requires ARRIVAL_API_KEY (s3_stand_in's), with `extra` variables over it."""
    return {
        **os.environ,
        "ARRIVAL_SERVING_MODELS_BUCKET": models_bucket,
        "ARRIVAL_SERVING_HOST": "127.0.0.1",
        "ARRIVAL_SERVING_PORT": str(port),
        "ARRIVAL_SERVING_API_KEY": os.environ["ARRIVAL_API_KEY"],
        # One worker process, as every figure before arrival-serve ran one per core: the sections
        # compare one server's process with another's (benchmarks/serving_workers.py compares counts).
        "ARRIVAL_SERVING_WORKERS": "1",
        **(extra or {}),
    }


@contextlib.contextmanager
def running(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process of our own, in a process group of its own, ended (group and all) on exit."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (fields 14 and 15 of /proc/<pid>/stat)."""
    return sum(int(f[11]) + int(f[12]) for pid in pids if (f := _stat_fields(pid))) / TICKS


def machine_busy_seconds() -> float:
    """CPU time spent on every core, but idle and iowait, since boot."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Memory:
    rss_mb: float  # VmRSS of the process and all its descendants
    peak_mb: float  # VmHWM of the root process
    processes: int


def _status_mb(pid: int, name: str) -> float:
    with contextlib.suppress(OSError, IndexError):
        return float(Path(f"/proc/{pid}/status").read_text().split(f"{name}:")[1].split()[0]) / 1024
    return 0.0


def memory_of(root: int) -> Memory:
    tree = process_tree(root)
    return Memory(sum(_status_mb(pid, "VmRSS") for pid in tree), _status_mb(root, "VmHWM"), len(tree))


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    server_cores: float  # CPU the server's processes used, in cores
    other_cores: float  # CPU everything but the server and wrk used (the rest of the machine), in cores

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors

    def row(self) -> str:
        return (
            f"{self.requests_per_second:,.0f} | {self.p50_ms:.2f} | {self.p90_ms:.2f} | {self.p99_ms:.2f} | "
            f"{self.max_ms:.1f} | {self.failed} | {self.server_cores:.2f} | {self.other_cores:.2f}"
        )


LOAD_COLUMNS = "req/s | p50 | p90 | p99 | max | failed | server cores | others' cores"


def wrk(url: str, body_file: Path, connections: int, seconds: int, server_pid: int) -> Load:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA), url]
    server = process_tree(server_pid)

    def clocks() -> tuple[float, float, float, float]:
        return time.monotonic(), cpu_seconds(server), machine_busy_seconds(), children_cpu_seconds()

    before = clocks()
    env = {**os.environ, "ARRIVAL_WRK_BODY": str(body_file)}
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60, env=env
    )
    wall, server_cpu, busy, wrk_cpu = (after - first for after, first in zip(clocks(), before, strict=True))
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return Load(
        requests_per_second=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non_2xx=data["non_2xx"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        server_cores=server_cpu / wall,
        other_cores=max(0.0, (busy - server_cpu - wrk_cpu) / wall),
    )


def median_load(loads: list[Load]) -> Load:
    """Each figure's median over the runs; failures summed."""
    middle = {
        name: median([getattr(load, name) for load in loads])
        for name in Load.__dataclass_fields__
        if name not in ("non_2xx", "socket_errors")
    }
    return Load(
        **middle, non_2xx=sum(x.non_2xx for x in loads), socket_errors=sum(x.socket_errors for x in loads)
    )


def wait_until_quiet(server_pid: int, budget: dict[str, float], threshold: float = NOISY_CORES) -> None:
    """Before a measured run, wait (within a budget shared by the whole benchmark) until the rest of the
    machine uses under `threshold` cores: other programs on a 2-core machine would be measured too."""
    while budget["seconds"] > 0:
        server = process_tree(server_pid)
        started, server_cpu, busy = time.monotonic(), cpu_seconds(server), machine_busy_seconds()
        time.sleep(1)
        wall = time.monotonic() - started
        others = (machine_busy_seconds() - busy - (cpu_seconds(server) - server_cpu)) / wall
        if others < threshold:
            return
        budget["seconds"] -= wall


INTRODUCTION = """
Two models on the same synthetic data (5,000 rows, 20 numeric features, 3 classes), fitted with
`worker.training.build_model` (a 100-tree random forest of unbounded depth; a logistic regression behind
a scaler), registered in the local cloud's MLflow server with the trainer's `log_and_register_model`,
and published as serving bundles with the trainer's `worker.serving_bundle`. *arrival* is the stack's
EC2 serving instance as the local EC2 agent booted it (`arrival-serve`: one uvicorn process, uvloop +
httptools, no access log) on localhost; *mlflow* is `mlflow models serve -m models:/<name>/<version>
--env-manager local` (its defaults: one uvicorn worker, access log on) on the same registered version;
*hello* is a FastAPI hello world (`POST /` returning `{{"hello": "world"}}`) under `arrival-serve`'s
uvicorn settings. One server is measured at a time, with wrk on one thread (`-t1`) on the same machine:
load generator and server share its cores. Each wrk run also reports the CPU the server used and the CPU
everything else used (*others' cores*: the local cloud, idle, and any other program on the machine),
from /proc. Latencies in ms.
"""


@dataclass
class Report:
    command: str
    results: Path = RESULTS
    started: float = field(default_factory=time.monotonic)
    targets: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: bool = False

    def target(self, measure: str, target: str, measured: str, outcome: str) -> None:
        self.targets[measure] = (target, measured, outcome)

    def section(self, title: str, text: str) -> None:
        self.sections[title] = text
        self.write()

    def write(self) -> None:
        minutes = (time.monotonic() - self.started) / 60
        state = f"took {minutes:.1f} min" if self.finished else f"partial: {minutes:.1f} min so far"
        lines = [
            "# Serving benchmark",
            "",
            f"`{self.command}` on {time.strftime('%Y-%m-%d')} ({state}). {machine()}.",
            "",
            paragraph(INTRODUCTION),
            "",
            "## Targets",
            "",
            "| measure | target | measured | verdict |",
            "|---|---|---|---|",
            *(
                f"| {name} | {target} | {measured} | {outcome} |"
                for name, (target, measured, outcome) in self.targets.items()
            ),
            "",
        ]
        for title, text in self.sections.items():
            lines += [f"## {title}", "", text.rstrip(), ""]
        if self.notes:
            lines += ["## Notes", "", *(f"- {note}" for note in self.notes), ""]
        self.results.write_text("\n".join(lines))
        print(f"wrote {self.results}", flush=True)  # noqa: T201


@cache
def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    memory_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    packages = ("fastapi", "uvicorn", "onnxruntime", "mlflow", "scikit-learn")
    versions = ", ".join(f"{name} {package_version(name)}" for name in packages)
    wrk_version = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {versions}; wrk {wrk_version[1] if len(wrk_version) > 1 else '?'}"
    )


class Bench:
    def __init__(
        self,
        settings: LocalCloudSettings,
        outputs: dict[str, str],
        report: Report,
        options: argparse.Namespace,
    ) -> None:
        self.settings, self.outputs, self.report, self.options = settings, outputs, report, options
        self.bucket = outputs["ModelsBucketName"]
        self.api = settings.api_url
        self.scratch = Path(tempfile.mkdtemp(prefix="arrival-serving-bench-"))
        self.models: dict[str, Fitted] = {}
        self.next_version: dict[str, int] = {}
        self.loads: dict[tuple[str, str, int], Load] = {}
        self.own_times: dict[str, float] = {}
        self.pieces: dict[tuple[str, int], dict[str, float]] = {}
        self.reload_runs: list[tuple[Load, Load]] = []
        self.memory: dict[str, Memory] = {}
        self.server_pid = 0
        self.quiet_budget = {"seconds": float(options.quiet_budget)}
        self.key_own_times: dict[tuple[str, str], float] = {}
        self.key_check_cost = float("nan")
        self.discarded = 0

    # models, bundles, promotions

    def prepare_models(self) -> None:
        for seed, (name, family) in enumerate(MODELS.items()):
            started = time.monotonic()
            fitted = self.models[name] = fit_and_register(name, family, seed)
            self.next_version[name] = int(fitted.registered) + 1
            self.publish(fitted, fitted.registered)
            self.promote(name, fitted.registered)
            seconds = time.monotonic() - started
            size = len(fitted.onnx) / 1e6
            print(f"{name} v{fitted.registered}: {size:.1f} MB ONNX, {seconds:.1f} s", flush=True)  # noqa: T201

    def publish(self, fitted: Fitted, version: str) -> None:
        publish_fitted(self.bucket, fitted, version)

    def new_versions(self, name: str, count: int) -> list[str]:
        """Bundles of new versions, published ahead so only the promotion is timed: the same fitted model
        under a new version number, which serving downloads, loads and checks as any new version."""
        versions = [str(self.next_version[name] + index) for index in range(count)]
        self.next_version[name] += count
        for version in versions:
            self.publish(self.models[name], version)
        return versions

    def promote(self, name: str, version: str, *, event: bool = True) -> float:
        """The trainer's promotion once the alias has moved: the pointer, then ModelPromoted on the bus.
        Returns the perf_counter moment just before the pointer moved."""
        started = time.perf_counter()
        point_serving_at(self.bucket, name, version, "benchmark promotion")
        if event:
            fitted = self.models[name]
            detail = {
                "name": name,
                "version": version,
                "metrics": fitted.metrics,
                "champion_version": None,
                "reason": "benchmark promotion",
                "run_id": fitted.run_id,
                "lineage": ["benchmark:synthetic"],
            }
            events.publish(self.outputs["EventBusName"], "ModelPromoted", detail)
        return started

    def current(self) -> dict[str, str]:
        return {name: str(self.next_version[name] - 1) for name in self.models}

    def wait_for_server(self) -> None:
        wait_for(lambda: served(self.api) == self.current(), 180, "the serving instance serving both models")
        pids = [pid for pid in marked_processes(self.settings.cloud_id) if b"arrival-serve" in _cmdline(pid)]
        if len(pids) != 1:
            raise RuntimeError(f"expected one arrival-serve process of this cloud, found {pids}")
        self.server_pid = pids[0]
        self.memory["arrival, both models loaded, before any request"] = memory_of(self.server_pid)

    def body_file(self, body: bytes) -> Path:
        path = self.scratch / f"body-{abs(hash(body))}.json"
        path.write_bytes(body)
        return path

    # 1. single records

    def single_records(self) -> None:
        """Every server up (idle but the one measured), and the cases interleaved run by run, so that
        whatever else the machine does falls on every server alike."""
        with contextlib.ExitStack() as servers:
            cases: list[tuple[str, str, str, bytes, int, int]] = []
            for name, fitted in self.models.items():
                predict, invocations = (
                    f"{self.api}/models/{name}/predict",
                    f"{self.api}/models/{name}/invocations",
                )
                cases += [
                    ("arrival", name, predict, fitted.record_body, self.server_pid, c) for c in CONNECTIONS
                ]
                cases.append(
                    ("arrival /invocations", name, invocations, fitted.mlflow_body, self.server_pid, 16)
                )
                url, pid = servers.enter_context(self.mlflow_serve(fitted))
                cases += [
                    ("mlflow", name, f"{url}/invocations", fitted.mlflow_body, pid, c) for c in CONNECTIONS
                ]
            url, pid = servers.enter_context(self.hello_world())
            cases += [("hello", "-", url, self.models[FOREST].record_body, pid, c) for c in CONNECTIONS]
            runs: dict[tuple[str, str, int], list[Load]] = {}
            for repeat in range(1, self.options.repeats + 1):
                for server, model, url, body, pid, connections in cases:
                    load = self.measured_run(
                        url, self.body_file(body), connections, self.options.seconds, pid
                    )
                    runs.setdefault((server, model, connections), []).append(load)
                    print(f"{repeat}: {server} {model} c{connections}: {load.row()}", flush=True)  # noqa: T201
                self.loads = {case: median_load(loads) for case, loads in runs.items()}
                self.write_single_records()
            for name in self.models:
                self.own_times[name] = self.app_own_time(name)
            self.write_single_records()
        self.remember_server_memory("after section 1")

    def measured_run(self, url: str, body_file: Path, connections: int, seconds: int, pid: int) -> Load:
        """A warm-up, then a run; measured again (within the budget) if other programs took CPU meanwhile."""
        for _attempt in range(3):
            wait_until_quiet(pid, self.quiet_budget)
            wrk(url, body_file, connections, self.options.warmup, pid)
            load = wrk(url, body_file, connections, seconds, pid)
            if load.other_cores <= NOISY_CORES or self.quiet_budget["seconds"] <= 0:
                break
            self.quiet_budget["seconds"] -= seconds
            self.discarded += 1
        return load

    @contextlib.contextmanager
    def mlflow_serve(self, fitted: Fitted) -> Iterator[tuple[str, int]]:
        port = free_port()
        uri = f"models:/{fitted.name}/{fitted.registered}"
        command = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
        command += ["-h", "127.0.0.1", "-p", str(port)]
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        url = f"http://127.0.0.1:{port}"
        with running(command, self.scratch / f"mlflow-{fitted.name}.log", env) as process:
            wait_for(lambda: _answers(f"{url}/ping"), 180, f"mlflow models serve for {fitted.name}")
            theirs = httpx.post(f"{url}/invocations", content=fitted.mlflow_body, headers=JSON_HEADERS).json()
            ours = httpx.post(
                f"{self.api}/models/{fitted.name}/predict", content=fitted.record_body, headers=json_headers()
            )
            self.report.notes.append(
                f"{fitted.name}, the benchmark's record: mlflow serve answered {theirs['predictions']}, "
                f"arrival {ours.json()['prediction']!r} (version {ours.headers['x-model-version']})."
            )
            yield url, process.pid
            self.memory[f"mlflow serve, {fitted.name} alone"] = memory_of(process.pid)

    @contextlib.contextmanager
    def hello_world(self) -> Iterator[tuple[str, int]]:
        port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-hello", str(port)]
        with running(command, self.scratch / "hello.log", dict(os.environ)) as process:
            wait_for(lambda: port_is_listening(port), 60, "the hello world server")
            yield f"http://127.0.0.1:{port}/", process.pid
            self.memory["hello world"] = memory_of(process.pid)

    def write_single_records(self) -> None:
        rows = [
            f"| {model} | {server} | {count} | {load.row()} |"
            for (server, model, count), load in self.loads.items()
        ]
        text = paragraph(
            """wrk `-t1 -c<connections> -d{seconds}s --latency -s benchmarks/serving.lua`, one record per
            request, each run after a {warmup} s warm-up at the same concurrency; {repeats} runs per case,
            the cases interleaved (every server runs all along, idle but the one measured), medians of each
            figure over the runs (failures summed). arrival: `POST /models/<model>/predict` with the record
            as a JSON object; *arrival /invocations*: the same server on `POST /models/<model>/invocations`
            with mlflow's body; mlflow: `POST /invocations` with `{{"dataframe_records": [record]}}`; hello:
            `POST /` (the same body as arrival's, not read). The app's own time for one record (its
            `Server-Timing`, median of 200 sequential requests, the server otherwise idle): {own}.""",
            seconds=self.options.seconds,
            repeats=self.options.repeats,
            warmup=self.options.warmup,
            own=", ".join(f"{name} {value * 1e6:.0f} µs" for name, value in self.own_times.items()) or "-",
        )
        table = f"| model | server | connections | {LOAD_COLUMNS} |\n|{'---|' * 11}\n" + "\n".join(rows)
        self.report.section("1. Single-record throughput and latency", f"{text}\n\n{table}\n")
        self.single_record_targets()

    def app_own_time(self, name: str) -> float:
        with httpx.Client(base_url=self.api, timeout=10) as client:
            body = self.models[name].record_body
            responses = [
                client.post(f"/models/{name}/predict", content=body, headers=json_headers())
                for _ in range(200)
            ]
        return median([_server_timing_seconds(response) for response in responses])

    def single_record_targets(self) -> None:
        hello = self.loads.get(("hello", "-", 16))
        for name in self.models:
            ours, theirs = self.loads.get(("arrival", name, 16)), self.loads.get(("mlflow", name, 16))
            if ours is None or theirs is None:
                continue
            speedup, p99_share = (
                ours.requests_per_second / theirs.requests_per_second,
                ours.p99_ms / theirs.p99_ms,
            )
            self.report.target(
                f"1. {name}, 16 connections: req/s vs mlflow serve",
                ">= 5x",
                f"{speedup:.1f}x ({ours.requests_per_second:,.0f} vs {theirs.requests_per_second:,.0f})",
                verdict(speedup, 5, at_least=True),
            )
            self.report.target(
                f"1. {name}, 16 connections: p99 vs mlflow serve",
                "<= 0.3x",
                f"{p99_share:.2f}x ({ours.p99_ms:.1f} vs {theirs.p99_ms:.1f} ms)",
                verdict(p99_share, 0.3, at_least=False),
            )
            if hello is not None:
                share = ours.requests_per_second / hello.requests_per_second
                self.report.target(
                    f"1. {name}, 16 connections: req/s vs hello world",
                    ">= 60%",
                    f"{share * 100:.0f}% ({ours.requests_per_second:,.0f} vs "
                    f"{hello.requests_per_second:,.0f})",
                    verdict(share, 0.6, at_least=True),
                )

    # 2. a batch of 1,000 records

    def batch(self) -> None:
        from serving.app import create_app
        from serving.store import ModelStore

        settings = ServingSettings(models_bucket=self.bucket)
        store = ModelStore(self.bucket, max_batch=settings.max_batch)
        store.refresh()
        # Without a key: the app's own work on a batch (section 8 measures what the check costs).
        app = create_app(settings, store=store, api_key=None)
        rows, pieces = [], []
        runs = self.options.batch_runs
        samples: dict[str, list[list[float]]] = {name: [[], [], [], [], []] for name in self.models}
        for _round in range(BATCH_ROUNDS):  # the models in turn, so that a slow moment falls on both
            for name, fitted in self.models.items():
                path, body = f"/models/{name}/predict", fitted.batch_body
                wait_until_quiet(os.getpid(), self.quiet_budget)
                measured = (
                    *asyncio.run(_asgi_times(app, path, body, runs)),
                    *_http_times(self.api, path, body, runs),
                )
                for kept, new in zip(samples[name], measured, strict=True):
                    kept.extend(new)
        for name, fitted in self.models.items():
            in_process, cpu, app_own, round_trip, server_own = samples[name]
            rows.append(
                f"| {name} | **{ms(median(in_process))}** | {ms(median(cpu))} | {ms(p90(in_process))} | "
                f"{ms(median(app_own))} | {ms(median(round_trip))} | {ms(median(server_own))} |"
            )
            self.report.target(
                f"2. {name}: 1,000 records, server time (in process, median)",
                "<= 5 ms",
                f"{ms(median(in_process))} ms (CPU time: {ms(median(cpu))} ms)",
                verdict(median(in_process), 0.005, at_least=False),
            )
            wait_until_quiet(os.getpid(), self.quiet_budget)
            for count, times in ((BATCH, runs), (1, runs * 20)):
                row, self.pieces[(name, count)] = _where_time_goes(store.models[name], fitted, count, times)
                pieces.append(row)
        text = paragraph(
            """`POST /models/<model>/predict` with `{{"records": [...1,000 records]}}` ({size:.0f} kB):
            {rounds} rounds, the models in turn, of {runs} requests after 5 warm-up requests; medians and p90
            over the {total} requests. *In process*: through the ASGI app
            (`httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(...)))`, its models loaded by a
            `ModelStore` from the stack's bucket), from the client's call to its response, in wall-clock
            time and in the CPU time of the thread that ran it (all of it runs on that thread: the time it
            did not spend waiting for a core); *app's own*: the app's `Server-Timing` (body read,
            validation, inference, serialization). *Round trip*: a keep-alive `httpx.Client` to the serving
            instance on localhost, for reference. In ms.""",
            size=len(self.models[FOREST].batch_body) / 1e3,
            rounds=BATCH_ROUNDS,
            runs=runs,
            total=BATCH_ROUNDS * runs,
        )
        table = (
            "| model | in process, median | in process, CPU time | in process, p90 | app's own, in process | "
            "localhost round trip | app's own, server |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows)
        )
        where = f"{paragraph(PIECES)}\n\n{PIECES_HEADER}\n" + "\n".join(pieces)
        self.report.section("2. Batch of 1,000 records", f"{text}\n\n{table}\n\n{where}\n")

    # 3. reloads under load

    def reloads(self) -> None:
        seconds, count = self.options.reload_seconds, self.options.promotions
        url, body_file = (
            f"{self.api}/models/{FOREST}/predict",
            self.body_file(self.models[FOREST].record_body),
        )
        rows = []
        for pair in range(1, self.options.reload_pairs + 1):
            quiet, busy, reloads = self._reload_pair(url, body_file)
            self.reload_runs.append((quiet, busy))
            rows.append(f"| {pair} | without reloads | {quiet.row()} | - |")
            rows.append(f"| {pair} | {count} promotions | {busy.row()} | {reloads:.0f} |")
            self.report.target(
                f"3. failed requests during {count} promotions (pair {pair})",
                "0",
                f"{busy.non_2xx} non-2xx, {busy.socket_errors} socket errors",
                "met" if busy.failed == 0 else "**missed**",
            )
            self.report.target(
                f"3. p99 during promotions vs without (pair {pair})",
                "<= +20%",
                f"{(busy.p99_ms / quiet.p99_ms - 1) * 100:+.0f}% "
                f"({busy.p99_ms:.1f} vs {quiet.p99_ms:.1f} ms)",
                verdict(busy.p99_ms / quiet.p99_ms, 1.2, at_least=False),
            )
            text = paragraph(
                """wrk `-t1 -c16 -d{seconds}s` on {forest}'s predict, twice back to back: without reloads,
                then while {count} new versions are promoted at even intervals. Each bundle is published
                beforehand; the promotion is the trainer's: move the pointer, then put `ModelPromoted` on
                the stack's bus, which feeds the server's reload queue. Each new version is the same fitted
                forest under a new version number ({size:.1f} MB of ONNX), which the server downloads,
                hashes, loads into onnxruntime and checks against its check records, as any new version.
                *reloads*: the server's `arrival_model_reloads_total` for the model, over the run.""",
                seconds=seconds,
                forest=FOREST,
                count=count,
                size=len(self.models[FOREST].onnx) / 1e6,
            )
            table = f"| pair | case | {LOAD_COLUMNS} | reloads |\n|{'---|' * 11}\n" + "\n".join(rows)
            self.report.section("3. Reloads under load", f"{text}\n\n{table}\n")
        self.remember_server_memory("after section 3")

    def _reload_pair(self, url: str, body_file: Path) -> tuple[Load, Load, float]:
        """Without, then with promotions; both again (within the budget) if other programs took CPU."""
        seconds, count = self.options.reload_seconds, self.options.promotions
        for _attempt in range(3):
            wait_until_quiet(self.server_pid, self.quiet_budget)
            wrk(url, body_file, 16, self.options.warmup, self.server_pid)
            quiet = wrk(url, body_file, 16, seconds, self.server_pid)
            versions = self.new_versions(FOREST, count)
            reloads_before = _reload_count(self.api, FOREST)
            promoter = threading.Thread(target=self._promote_during, args=(versions, seconds))
            promoter.start()
            busy = wrk(url, body_file, 16, seconds, self.server_pid)
            promoter.join()
            wait_for(
                lambda v=versions[-1]: served(self.api).get(FOREST) == v, 60, "the last promotion served"
            )
            reloads = _reload_count(self.api, FOREST) - reloads_before
            if max(quiet.other_cores, busy.other_cores) <= NOISY_CORES or self.quiet_budget["seconds"] <= 0:
                break
            self.quiet_budget["seconds"] -= 2 * seconds
            self.discarded += 2
        return quiet, busy, reloads

    def _promote_during(self, versions: list[str], seconds: float) -> None:
        started, interval = time.monotonic(), (seconds - 4) / len(versions)
        for index, version in enumerate(versions):
            time.sleep(max(0.0, started + 2 + index * interval - time.monotonic()))  # pacing, not waiting
            self.promote(FOREST, version)

    # 4. promotion -> new version answering

    def promotions(self) -> None:
        rows: list[str] = []
        event_path = self._time_promotions(self.api, self.options.promotions, event=True)
        rows.append(_promotion_row("event (reload queue): the serving instance", event_path))
        self.report.target(
            "4. promotion -> first answer from the new version, event path (median)",
            "<= 2 s",
            f"{median(event_path):.2f} s",
            verdict(median(event_path), 2.0, at_least=False),
        )
        self._write_promotions(rows)
        if self.options.poll_promotions:
            polled = self._poll_only()
            rows.append(
                _promotion_row(
                    "poll only (no reload queue, default `poll_seconds`): an `arrival-serve` of our own",
                    polled,
                )
            )
            self._write_promotions(rows)

    def _write_promotions(self, rows: list[str]) -> None:
        text = paragraph(
            """For each promotion of {forest} (a new {size:.1f} MB bundle, published beforehand), from just
            before the pointer moves (then, on the event path, `ModelPromoted` goes on the bus, as the
            trainer's `carry_out` does) to the first predict response carrying the new `X-Model-Version`,
            asked every 10 ms. In seconds.""",
            forest=FOREST,
            size=len(self.models[FOREST].onnx) / 1e6,
        )
        table = "| path | promotions | median | min | max |\n|---|---|---|---|---|\n" + "\n".join(rows)
        self.report.section("4. Promotion -> new version answering", f"{text}\n\n{table}\n")

    def _time_promotions(self, base_url: str, count: int, *, event: bool) -> list[float]:
        versions = self.new_versions(FOREST, count)
        times = []
        with httpx.Client(base_url=base_url, headers=key_headers(), timeout=10) as client:
            for version in versions:
                if not event:  # a random moment in the poll's cycle, or each promotion lands at the same one
                    time.sleep(random.uniform(0, POLL_SECONDS))  # noqa: S311
                started = self.promote(FOREST, version, event=event)
                times.append(_first_answer_from(client, self.models[FOREST].record_body, version, started))
                time.sleep(0.5)  # pacing: the server settles before the next promotion
        print(f"promotions ({'event' if event else 'poll'}): {[round(t, 2) for t in times]}", flush=True)  # noqa: T201
        return times

    def _poll_only(self) -> list[float]:
        """The fallback when an event is lost: an `arrival-serve` of our own without the reload queue."""
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("ARRIVAL_SERVING_")}
        env.update(
            ARRIVAL_SERVING_MODELS_BUCKET=self.bucket,
            ARRIVAL_SERVING_HOST="127.0.0.1",
            ARRIVAL_SERVING_PORT=str(port),
        )
        url = f"http://127.0.0.1:{port}"
        with running([str(BIN / "arrival-serve")], self.scratch / "poll-only-serve.log", env):
            wait_for(lambda: served(url) == self.current(), 120, "our own arrival-serve")
            return self._time_promotions(url, self.options.poll_promotions, event=False)

    # 5. memory

    def remember_server_memory(self, when: str) -> None:
        reloads = sum(_reload_count(self.api, name) for name in self.models) - len(self.models)
        self.memory[f"arrival, {when} ({reloads:.0f} reloads since both models loaded)"] = memory_of(
            self.server_pid
        )

    def write_memory(self) -> None:
        self.remember_server_memory("at the end")
        ours = max(memory.rss_mb for label, memory in self.memory.items() if label.startswith("arrival"))
        self.report.target(
            "5. RSS of the serving process, both models loaded (highest seen)",
            "<= 300 MB",
            f"{ours:.0f} MB",
            verdict(ours, 300, at_least=False),
        )
        text = paragraph(
            """`VmRSS` from `/proc/<pid>/status`, summed over the process and its descendants (arrival: one
            process); *peak* is the root process's `VmHWM`. arrival holds both models ({forest:.1f} MB and
            {linear:.1f} kB of ONNX); each mlflow serve holds one.""",
            forest=len(self.models[FOREST].onnx) / 1e6,
            linear=len(self.models["bench-linear"].onnx) / 1e3,
        )
        rows = [
            f"| {label} | {mem.rss_mb:.0f} | {mem.peak_mb:.0f} | {mem.processes} |"
            for label, mem in self.memory.items()
        ]
        table = "| process | RSS MB | peak MB | processes |\n|---|---|---|---|\n" + "\n".join(rows)
        self.report.section("5. Memory", f"{text}\n\n{table}\n")

    # 6. the Lambda behind API Gateway

    def lambda_api(self) -> None:
        base = f"{self.settings.aws_endpoint_url}/_aws/execute-api/{self.outputs['ServingApiId']}/Prod"
        runs, rows = self.options.lambda_runs, []
        with httpx.Client(base_url=base, headers=key_headers(), timeout=300) as client:
            started = time.perf_counter()
            first = client.post(
                f"/models/{FOREST}/predict", content=self.models[FOREST].record_body, headers=json_headers()
            )
            cold = time.perf_counter() - started
            if first.status_code != 200:
                raise RuntimeError(
                    f"the first answer: {first.status_code} {first.text[:200]}; {self._lambda_error()}"
                )
            rows.append(
                f"| first request (cold: process start, imports, both bundles loaded) | 1 | **{ms(cold)}** "
                "| | | |"
            )
            for name, fitted in self.models.items():
                times, own = _lambda_times(
                    client, "POST", f"/models/{name}/predict", fitted.record_body, runs
                )
                rows.append(_lambda_row(f"warm `POST /models/{name}/predict`", times, own))
                self.report.target(
                    f"6. Lambda warm predict through API Gateway, {name} (median)",
                    "<= 50 ms",
                    f"{ms(median(times))} ms (cold: {ms(cold)} ms)",
                    verdict(median(times), 0.05, at_least=False),
                )
            times, own = _lambda_times(client, "GET", "/health", b"", runs)
            rows.append(
                _lambda_row(
                    "warm `GET /health`: the floor (API Gateway, invoke, the app's least)", times, own
                )
            )
        text = paragraph(
            """`{base}/...`: LocalStack's address for the REST API's Prod stage; the function runs in
            arrival's Lambda process executor. A keep-alive `httpx.Client`, {runs} requests per row after 5
            warm-up requests. The function looks at its pointers at most every 2 s, on a request
            (`lambda_check_seconds`), so a few requests pay an S3 listing. *app's own*: the response's
            `Server-Timing`. In ms.""",
            base=base,
            runs=runs,
        )
        table = (
            "| request | n | median | p90 | max | app's own, median |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows)
        )
        self.report.section("6. Lambda behind API Gateway (LocalStack)", f"{text}\n\n{table}\n")

    def _lambda_error(self) -> str:
        """The function's own error lines from CloudWatch Logs, for a failed invocation."""
        with contextlib.suppress(Exception):
            group = f"/aws/lambda/{self.outputs['ServingFunctionName']}"
            found = boto3.client("logs").filter_log_events(logGroupName=group).get("events", [])
            errors = {event["message"].strip() for event in found if "[ERROR]" in event["message"]}
            return "the function logged: " + " | ".join(sorted(errors))[:600]
        return "no function log"

    # 8. the API key check

    def api_key_check(self) -> None:
        """Two servers alike but for the key check, side by side: `arrival-serve` itself with the key, and
        the same app and uvicorn settings without one; the runs interleaved, as in section 1."""
        runs: dict[tuple[str, str], list[Load]] = {}
        with contextlib.ExitStack() as servers:
            keyed_url, keyed_pid = servers.enter_context(self.twin(with_key=True))
            open_url, open_pid = servers.enter_context(self.twin(with_key=False))
            twins = [("with the key", keyed_url, keyed_pid), ("without", open_url, open_pid)]
            for repeat in range(1, self.options.repeats + 1):
                # Which twin goes first alternates, so that a machine getting busier or quieter over a
                # pair does not always favour the same one.
                order = twins if repeat % 2 else twins[::-1]
                cases = [(checked, name, url, pid) for name in self.models for checked, url, pid in order]
                for checked, name, url, pid in cases:
                    body_file = self.body_file(self.models[name].record_body)
                    load = self.measured_run(
                        f"{url}/models/{name}/predict", body_file, 16, self.options.seconds, pid
                    )
                    runs.setdefault((name, checked), []).append(load)
                    print(f"{repeat}: {name} {checked}: {load.row()}", flush=True)  # noqa: T201
                self.write_api_key_check(runs)
            # The app's own time (its Server-Timing, which starts before the check), one request at a
            # time: far less at the mercy of the other programs than a throughput.
            for name in self.models:
                for checked, url in (("with the key", keyed_url), ("without", open_url)):
                    self.key_own_times[(name, checked)] = self.own_time_at(url, name)
            self.key_check_cost = _key_check_seconds()
            self.write_api_key_check(runs)

    def own_time_at(self, url: str, name: str, requests: int = 500) -> float:
        with httpx.Client(base_url=url, headers=json_headers(), timeout=10) as client:
            body = self.models[name].record_body
            responses = [client.post(f"/models/{name}/predict", content=body) for _ in range(requests)]
        return median([_server_timing_seconds(response) for response in responses])

    @contextlib.contextmanager
    def twin(self, *, with_key: bool) -> Iterator[tuple[str, int]]:
        """A serving process on a port of its own, reading the stack's bucket as the instance does."""
        port = free_port()
        env = {
            **os.environ,
            "ARRIVAL_SERVING_MODELS_BUCKET": self.bucket,
            "ARRIVAL_SERVING_CAPTURE_BUCKET": self.outputs["CaptureBucketName"],
            "ARRIVAL_SERVING_HOST": "127.0.0.1",
            "ARRIVAL_SERVING_PORT": str(port),
            "ARRIVAL_SERVING_API_KEY": os.environ["ARRIVAL_API_KEY"] if with_key else "",
        }
        env.pop("ARRIVAL_SERVING_API_KEY_SECRET", None)
        if with_key:
            command = [str(BIN / "arrival-serve")]
        else:
            del env["ARRIVAL_SERVING_API_KEY"]
            command = [sys.executable, str(Path(__file__).resolve()), "--serve-without-key"]
        label = "keyed" if with_key else "open"
        url = f"http://127.0.0.1:{port}"
        with running(command, self.scratch / f"twin-{label}.log", env) as process:
            wait_for(lambda: served(url) == self.current(), 120, f"the {label} twin serving both models")
            refused = httpx.get(f"{url}/models", timeout=5).status_code
            if refused != (403 if with_key else 200):
                raise RuntimeError(f"the {label} twin answered GET /models without a key with {refused}")
            yield url, process.pid

    def write_api_key_check(self, runs: dict[tuple[str, str], list[Load]]) -> None:
        loads = {case: median_load(found) for case, found in runs.items()}
        rows = [
            f"| {name} | {checked} | {len(runs[(name, checked)])} | {load.row()} |"
            for (name, checked), load in loads.items()
        ]
        for name in self.models:
            keyed, unkeyed = loads.get((name, "with the key")), loads.get((name, "without"))
            if keyed is None or unkeyed is None:
                continue
            ratio = keyed.requests_per_second / unkeyed.requests_per_second
            self.report.target(
                f"8. {name}, 16 connections: req/s with the API key check vs without",
                ">= 95%",
                f"{ratio:.0%} ({keyed.requests_per_second:,.0f} vs {unkeyed.requests_per_second:,.0f})",
                verdict(ratio, 0.95, at_least=True),
            )
        text = paragraph(
            """Two servers alike but for the key check, up side by side in this run, each reading the
            stack's bucket and writing captures as the instance does: `arrival-serve` itself, given the
            key (`ARRIVAL_SERVING_API_KEY`), and the same `serving.main.serve` given no key. wrk `-t1
            -c16 -d{seconds}s` on `POST /models/<model>/predict`, one record a request, every request
            carrying the key (the server without a check ignores it); each run after a {warmup} s
            warm-up, the four cases interleaved run by run (which server goes first alternates from
            round to round), {repeats} runs each, medians of each figure over the runs.""",
            seconds=self.options.seconds,
            warmup=self.options.warmup,
            repeats=self.options.repeats,
        )
        table = f"| model | key check | runs | {LOAD_COLUMNS} |\n|{'---|' * 11}\n" + "\n".join(rows)
        # Each run with the key against the run without it just after: how much the pairs scatter.
        paired = "; ".join(
            f"{name} "
            + ", ".join(
                f"{keyed.requests_per_second / unkeyed.requests_per_second:.0%}"
                for keyed, unkeyed in zip(
                    runs[(name, "with the key")], runs.get((name, "without"), []), strict=False
                )
            )
            for name in self.models
            if (name, "with the key") in runs
        )
        pairs = f"req/s with the key / without, run by run (each pair measured back to back): {paired}."
        own = "; ".join(
            f"{name} {self.key_own_times[(name, 'with the key')] * 1e6:.0f} µs with the key, "
            f"{self.key_own_times[(name, 'without')] * 1e6:.0f} µs without"
            for name in self.models
            if (name, "without") in self.key_own_times
        )
        if own:
            pairs += " " + paragraph(
                """ The app's own time for one record (its `Server-Timing`, which begins before the check;
                median of 500 sequential requests to each server after the wrk runs): {own}. The check
                alone (`ApiKeyCheck.refusal` on the right 40-character key, in process, CPU time):
                {check:.2f} µs.""",
                own=own,
                check=self.key_check_cost * 1e6,
            )
        self.report.section("8. The API key check", f"{text}\n\n{table}\n\n{pairs}\n")

    # 7. the Lambda package

    def package(self) -> None:
        with tempfile.TemporaryDirectory(prefix="arrival-serving-package-") as artifacts:
            subprocess.run(
                ["make", "--no-print-directory", "build-ServingFunction", f"ARTIFACTS_DIR={artifacts}"],
                cwd=ROOT,
                check=True,
                env={**os.environ, "ARRIVAL_VENDOR_LAMBDA_DEPS": "1"},
            )
            root = Path(artifacts)
            sizes: dict[str, int] = {}
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    entry = path.relative_to(root).parts[0]
                    sizes[entry] = sizes.get(entry, 0) + path.stat().st_size
            zipped = (
                Path(shutil.make_archive(str(self.scratch / "serving-package"), "zip", root)).stat().st_size
            )
            c_api = sum(path.stat().st_size for path in root.glob("onnxruntime/capi/libonnxruntime.so*"))
        total = sum(sizes.values())
        runtime = sum(
            size
            for entry, size in sizes.items()
            if entry.split("-", 1)[0].removesuffix(".py") in RUNTIME_PROVIDED
        )
        self.report.target(
            "7. ServingFunction package, unzipped",
            "<= 150 MB",
            f"{total / 1e6:.1f} MB",
            verdict(total / 1e6, 150, at_least=False),
        )
        largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
        text = paragraph(
            """`ARRIVAL_VENDOR_LAMBDA_DEPS=1 make build-ServingFunction ARTIFACTS_DIR=<tmp>` (dependencies
            for python3.12 x86_64 vendored, as for AWS). Unzipped: **{total:.1f} MB** (Lambda's limit: 250
            MB); zipped (deflate): {zipped:.1f} MB. Largest entries, MB: {largest}. Of the total,
            {c_api:.1f} MB is `onnxruntime/capi/libonnxruntime.so.*`, onnxruntime's C API library, which its
            Python binding does not load (`onnxruntime_pybind11_state` is self-contained: it does not link
            it, and an `InferenceSession` runs with it deleted); and {runtime:.1f} MB is boto3 and its
            dependencies ({provided}), which the python3.12 Lambda runtime already has.""",
            total=total / 1e6,
            zipped=zipped / 1e6,
            largest=", ".join(f"`{entry}` {size / 1e6:.1f}" for entry, size in largest),
            c_api=c_api / 1e6,
            runtime=runtime / 1e6,
            provided=", ".join(RUNTIME_PROVIDED),
        )
        self.report.section("7. Lambda package size", text + "\n")

    # why targets were missed, from what was measured

    def explain(self) -> None:
        notes, missed = (
            self.report.notes,
            {name for name, (_, _, outcome) in self.report.targets.items() if outcome != "met"},
        )
        waited = self.options.quiet_budget - max(0.0, self.quiet_budget["seconds"])
        notes.append(
            f"Other programs shared the machine during the run: {self.discarded} wrk run(s) were measured "
            f"again because the rest of the machine used over {NOISY_CORES} cores during them, and "
            f"{waited:.0f} s (of a {self.options.quiet_budget} s budget) went to waiting for it to quieten; "
            "the *others' cores* columns show what the kept runs still shared."
        )
        if slow := [
            model for model in self.models if f"1. {model}, 16 connections: req/s vs hello world" in missed
        ]:
            notes.append(self._why_single_record(slow))
        hello, ours = self.loads.get(("hello", "-", 16)), self.loads.get(("arrival", FOREST, 16))
        if hello is not None and ours is not None and ours.p99_ms > 5 * hello.p99_ms:
            notes.append(paragraph(WHY_P99, ours=ours.p99_ms, p50=ours.p50_ms, hello=hello.p99_ms))
        if any(name.startswith("2.") for name in missed):
            notes.append(self._why_batch())
        if any(name.startswith("3. p99") for name in missed) and self.reload_runs:
            quiet, busy = self.reload_runs[0]
            notes.append(
                paragraph(
                    """Why p99 rises during reloads: each reload runs in a background thread of the serving
                    process (downloading the {size:.1f} MB bundle, hashing it, building an onnxruntime
                    session, running the check records), so it takes the GIL from the event loop (Python
                    hands it over every 5 ms, `sys.getswitchinterval()`) and CPU from a machine that wrk and
                    the server already keep busy: the server used {busy:.2f} cores during the promotions
                    against {quiet:.2f} without.""",
                    size=len(self.models[FOREST].onnx) / 1e6,
                    busy=busy.server_cores,
                    quiet=quiet.server_cores,
                    seconds=self.options.reload_seconds,
                    every=max(
                        1.0, busy.requests_per_second * self.options.reload_seconds / (10 * 0.3 * 1000) * 1000
                    ),
                )
            )
        if any(name.startswith("5.") for name in missed):
            notes.append(paragraph(WHY_MEMORY))

    def _why_single_record(self, slow: list[str]) -> str:
        hello = 1e6 / self.loads[("hello", "-", 16)].requests_per_second
        parts = []
        for name in slow:
            ours, one = self.loads.get(("arrival", name, 16)), self.pieces.get((name, 1))
            if ours is None or one is None:
                continue
            cost = 1e6 / ours.requests_per_second
            per_feature, one_input = (one["tensors"] + one["onnx"]) * 1e6, one["one input"] * 1e6
            parts.append(
                f"{name} {cost:.0f} µs, {cost - hello:.0f} µs more, of which the per-feature tensors and the "
                f"20-input ONNX run take {per_feature:.0f} µs against {one_input:.0f} µs for one [1, 20] "
                "input (section 2's tables)"
            )
        return paragraph(
            """Why arrival stays under 60% of hello world: at 16 connections a hello-world request costs the
            machine {hello:.0f} µs in all (1 / req/s: uvicorn, the HTTP parser, FastAPI's routing, wrk's
            share), and 60% of its rate allows {budget:.0f} µs; arrival's requests cost {parts}. The full
            garbage collections of the next note cost throughput too.""",
            hello=hello,
            budget=hello / 0.6,
            parts="; ".join(parts),
        )

    def _why_batch(self) -> str:
        parts = []
        for name in self.models:
            pieces = self.pieces.get((name, BATCH))
            if pieces is None:
                continue
            parts.append(
                f"{name}: validation {ms(pieces['validate'])}, tensors {ms(pieces['tensors'])}, ONNX "
                f"{ms(pieces['onnx'])} (2 threads: {ms(pieces['two threads'])}), probabilities and JSON "
                f"{ms(pieces['rest'])} ms"
            )
        return paragraph(
            """Why a batch of 1,000 takes over 5 ms (section 2, ms): {parts}. The forest's ONNX run alone is
            over the target on one thread (100 trees of unbounded depth, 1,000 rows); the server runs it
            with one intra-op thread, inline on the event loop, so a batch also holds every other request
            for its whole duration. Validation builds and checks 20,000 values through pydantic; the
            probabilities become one JSON object per record.""",
            parts="; ".join(parts),
        )


WHY_P99 = """
Why arrival's p99 at 16 connections ({ours:.0f} ms, p50 {p50:.1f} ms) is far above hello world's
({hello:.0f} ms) although it meets its target against mlflow: Python's full (generation 2) garbage
collections. Each one walks every object the process holds (FastAPI, pydantic, boto3, onnxruntime's
bindings, the models' schemas), finds nothing to free, and holds the event loop meanwhile, so the 16
requests in flight all wait. Measured separately on this machine (not by this script), the same app under
uvicorn with both models loaded, in a process that also held scikit-learn (so more objects than the
server): full collections took about 140 ms each, a few every 10 s at this load; with `gc.collect();
gc.freeze()` once the models are loaded, wrk `-c16` gave p99 3.5 ms instead of 102 ms and 8,400 req/s
instead of 6,800.
"""

WHY_MEMORY = """
Why RSS grows past the target: the server's RSS grows with reloads (section 5). A replaced version stays
in memory until the store's next refresh (`ModelStore._release_retired`), so two versions of a model can
be resident at once; and the reloads run in two long-lived threads (the pointer poll and the reload
queue), whose glibc malloc arenas keep what they freed unless trimmed. Measured separately on this machine
(not by this script): loading this forest's bundle 30 times in two long-lived threads, keeping only the
last, grew a process's RSS by about 190 MB, then it stayed there; with `MALLOC_ARENA_MAX=2` by about 100
MB; with `malloc_trim(0)` after each load it did not grow.
"""


def served(base_url: str) -> dict[str, str]:
    """Each model's version, as the server's /ready says."""
    try:
        response = httpx.get(f"{base_url}/ready", timeout=5)
    except httpx.TransportError:
        return {}
    return dict(response.json().get("models", {})) if response.status_code in (200, 503) else {}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _server_timing_seconds(response: httpx.Response) -> float:
    match = re.search(r"dur=([\d.]+)", response.headers.get("server-timing", ""))
    return float(match.group(1)) / 1000 if match else float("nan")


async def _asgi_times(
    app: Any, path: str, body: bytes, runs: int
) -> tuple[list[float], list[float], list[float]]:
    totals, cpu, own = [], [], []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        for run in range(5 + runs):
            started, started_cpu = time.perf_counter(), time.thread_time()
            response = await client.post(path, content=body, headers=JSON_HEADERS)
            elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            if response.status_code != 200:
                raise RuntimeError(f"in process: {response.status_code} {response.text[:300]}")
            if run >= 5:
                totals.append(elapsed)
                cpu.append(elapsed_cpu)
                own.append(_server_timing_seconds(response))
    return totals, cpu, own


def _http_times(base_url: str, path: str, body: bytes, runs: int) -> tuple[list[float], list[float]]:
    totals, own = [], []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for run in range(5 + runs):
            started = time.perf_counter()
            response = client.post(path, content=body, headers=json_headers())
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if run >= 5:
                totals.append(elapsed)
                own.append(_server_timing_seconds(response))
    return totals, own


def timed(runs: int, call: Callable[[], Any], clock: Callable[[], float] = time.thread_time) -> float:
    """The median of `runs` calls, by default in the CPU time of this thread: what the call costs, not
    what other programs on the machine made it wait."""
    times = []
    for _ in range(runs):
        started = clock()
        call()
        times.append(clock() - started)
    return median(times)


def _one_input_session(fitted: Fitted) -> Any:
    """The same fitted model exported with one [N, 20] float input instead of one [N, 1] input per
    feature (possible here: every feature is numeric), to show what the per-feature inputs cost."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.pipeline import Pipeline

    from common.bundle_loader import inference_session

    numeric = fitted.pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    estimator = fitted.pipeline.named_steps["estimator"]
    flat = Pipeline([("numeric", numeric), ("estimator", estimator)])
    exported = to_onnx(
        flat,
        initial_types=[("X", FloatTensorType([None, len(FEATURES)]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    return inference_session(exported.SerializeToString())


def _where_time_goes(model: Any, fitted: Fitted, count: int, runs: int) -> tuple[str, dict[str, float]]:
    """The served model's pieces timed one at a time on `count` records: where a request's time goes."""
    import onnxruntime

    from serving.app import answer_predict

    body = fitted.record_body if count == 1 else json.dumps({"records": fitted.records[:count]}).encode()
    records = model.schemas.decode_predict_body(body).records
    inputs = model.build_inputs(records)
    validate = timed(runs, lambda: model.schemas.decode_predict_body(body))
    tensors = timed(runs, lambda: model.build_inputs(records))
    onnx_run = timed(runs, lambda: model.session.run(None, inputs))
    whole = timed(runs, lambda: answer_predict(model, body))
    one_input = _one_input_session(fitted)
    flat = timed(
        runs,
        lambda: one_input.run(
            None, {"X": np.array([[r[f] for f in FEATURES] for r in records], dtype=np.float32)}
        ),
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    two_threads = onnxruntime.InferenceSession(fitted.onnx, options, providers=["CPUExecutionProvider"])
    onnx_two = timed(runs, lambda: two_threads.run(None, inputs), time.perf_counter)  # 2 threads: wall
    if "n_jobs" in fitted.pipeline[-1].get_params():
        fitted.pipeline[-1].set_params(n_jobs=1)  # one request's worth of work, as a server would run it
    frame = pd.DataFrame(fitted.records[:count])
    sklearn = timed(max(5, runs // 5), lambda: fitted.pipeline.predict_proba(frame))
    rest = max(0.0, whole - validate - tensors - onnx_run)
    figures = [validate, tensors, onnx_run, rest, whole, flat, onnx_two, sklearn]
    unit = 1e6 if count == 1 else 1e3
    row = " | ".join(f"{value * unit:.{0 if count == 1 else 2}f}" for value in figures)
    names = ("validate", "tensors", "onnx", "rest", "whole", "one input", "two threads", "sklearn")
    return f"| {fitted.name} | {count:,} | {row} |", dict(zip(names, figures, strict=True))


PIECES = """
Each piece of a predict answer timed alone, in process, on the model the server loaded (medians of the
runs, in the CPU time of the thread, but the 2-thread run, in wall-clock time; µs for one record, ms for
1,000): validating the body (pydantic, from the JSON bytes), the records
to one [N, 1] tensor per feature, the ONNX run as served (1 thread), the rest of the answer
(probabilities, JSON), the whole answer (`serving.app.answer_predict`); then, for comparison, the tensor
and the run of the same fitted model exported with one [N, 20] input, the served ONNX model with 2 intra-op
threads, and scikit-learn's `predict_proba` (1 job) on a DataFrame of the records.
"""
PIECES_HEADER = (
    "| model | records | validate | records -> tensors | ONNX run | the rest | whole answer | "
    "one [N, 20] input: tensor + run | ONNX run, 2 threads | scikit-learn |\n|" + "---|" * 10
)


def _reload_count(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", headers=key_headers(), timeout=10).text
    found = re.search(
        rf'^arrival_model_reloads_total\{{model="{re.escape(name)}"\}} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def _first_answer_from(
    client: httpx.Client, record: bytes, version: str, started: float, timeout: float = 60
) -> float:
    while time.perf_counter() - started < timeout:
        asked = time.perf_counter()
        with contextlib.suppress(httpx.TransportError):
            response = client.post(f"/models/{FOREST}/predict", content=record, headers=JSON_HEADERS)
            if response.headers.get("x-model-version") == version:
                return time.perf_counter() - started
        time.sleep(max(0.0, 0.01 - (time.perf_counter() - asked)))
    raise TimeoutError(f"{FOREST} version {version} not answering within {timeout} s")


def _promotion_row(label: str, times: list[float]) -> str:
    return f"| {label} | {len(times)} | **{median(times):.2f}** | {min(times):.2f} | {max(times):.2f} |"


def _lambda_times(
    client: httpx.Client, method: str, path: str, body: bytes, runs: int
) -> tuple[list[float], list[float]]:
    times, own = [], []
    for run in range(5 + runs):
        started = time.perf_counter()
        response = client.request(method, path, content=body or None, headers=JSON_HEADERS if body else None)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        if run >= 5:
            times.append(elapsed)
            own.append(_server_timing_seconds(response))
    return times, own


def _lambda_row(label: str, times: list[float], own: list[float]) -> str:
    app_own = [value for value in own if not np.isnan(value)]  # /health sends no Server-Timing
    own_text = ms(median(app_own)) if app_own else "-"
    figures = f"**{ms(median(times))}** | {ms(p90(times))} | {ms(max(times))}"
    return f"| {label} | {len(times)} | {figures} | {own_text} |"


def serve_hello(port: int) -> None:
    """FastAPI's hello world under `arrival-serve`'s uvicorn settings (serving/main.py)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def _key_check_seconds(calls: int = 200_000) -> float:
    """What the server's check costs a request that carries the right key, in process."""
    from serving.auth import ApiKeyCheck

    key = os.environ["ARRIVAL_API_KEY"]
    check = ApiKeyCheck(key)
    given = "".join(key)  # another str object, as a request's header is
    started = time.thread_time()  # one clock read for all the calls: each is far below its resolution
    for _ in range(calls):
        check.refusal(given)
    return (time.thread_time() - started) / calls


def serve_without_key() -> None:
    """`arrival-serve` without the API key check (serving.main.serve, with the app that checks no
    key), for section 8."""
    from serving.main import UNCHECKED_APP, serve
    from serving.settings import get_serving_settings

    serve(get_serving_settings(), UNCHECKED_APP)


def run_section(report: Report, title: str, section: Callable[[], None]) -> None:
    """A section that fails is reported as failed; the others still run."""
    print(f"--- {title}", flush=True)  # noqa: T201
    started = time.monotonic()
    try:
        section()
    except Exception as error:
        traceback.print_exc()
        report.notes.append(f"Section {title!r} failed: `{type(error).__name__}: {str(error)[:800]}`")
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)  # noqa: T201
    report.write()


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="each measured wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="measured wrk runs per case (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up before each measured run")
    parser.add_argument(
        "--quiet-budget", type=int, default=180, help="seconds to wait in all for a quiet machine"
    )
    parser.add_argument("--batch-runs", type=int, default=50)
    parser.add_argument("--reload-seconds", type=int, default=30)
    parser.add_argument(
        "--reload-pairs", type=int, default=1, help="(without, with promotions) pairs of runs"
    )
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--poll-promotions", type=int, default=3, help="0 skips the poll-only fallback")
    parser.add_argument("--lambda-runs", type=int, default=50)
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-without-key", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sections",
        default="1,2,3,4,5,6,7,8",
        help="the sections to run, by number (e.g. 8); those left out are left out of the results",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file to write")
    return parser.parse_args()


def main() -> None:
    arguments = options()
    if arguments.serve_hello:
        serve_hello(arguments.serve_hello)
        return
    if arguments.serve_without_key:
        serve_without_key()
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it (Debian/Ubuntu: `sudo apt-get install wrk`) and rerun")
    report = Report(" ".join(["uv run python benchmarks/serving.py", *sys.argv[1:]]), arguments.results)
    state = Path(tempfile.mkdtemp(prefix="arrival-serving-cloud-"))
    settings = LocalCloudSettings(
        state_dir=state, aws_port=free_port(), mlflow_port=free_port(), api_port=free_port()
    )
    point_sdks_at(settings)
    control.up(settings)
    try:
        # No training is queued here: the reconciler's Lambda would only take CPU from the measurements.
        outputs = deploy_stack(
            ROOT / "template.yaml",
            STACK,
            # One worker process: every section measures one server process against another
            # (benchmarks/serving_workers.py compares worker counts).
            {"ReconcileSchedule": "rate(1 hour)", "ServingWorkers": "1", **log_in_to_mlflow(settings, STACK)},
            vendor_dependencies=False,
        )
        # Every request to the stack's API carries its key, as a client's would (wrk reads it too).
        secret = boto3.client("secretsmanager").get_secret_value(SecretId=outputs["ServingApiKeySecretArn"])
        os.environ["ARRIVAL_API_KEY"] = secret["SecretString"]
        bench = Bench(settings, outputs, report, arguments)
        bench.prepare_models()
        bench.wait_for_server()
        chosen = {int(number) for number in arguments.sections.split(",")}
        if chosen != set(range(1, 9)):
            report.notes.append(
                f"Only section(s) {', '.join(map(str, sorted(chosen)))} ran (`--sections`); the introduction "
                "describes the whole benchmark, whose last full results are benchmarks/results/serving.md."
            )
        for number, title, section in (
            (1, "1. single records", bench.single_records),
            (2, "2. batch", bench.batch),
            (3, "3. reloads under load", bench.reloads),
            (4, "4. promotion -> answering", bench.promotions),
            (5, "5. memory", bench.write_memory),
            (6, "6. Lambda", bench.lambda_api),
            (7, "7. package", bench.package),
            (8, "8. the API key check", bench.api_key_check),
        ):
            if number in chosen:
                run_section(report, title, section)
        bench.explain()
    finally:
        control.down(settings)
        report.finished = True
        report.write()


if __name__ == "__main__":
    main()
