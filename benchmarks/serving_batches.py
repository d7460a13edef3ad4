"""Large batches on the serving instance: how long /health waits while a 10,000-record forest batch
runs, how long a batch of 1,000 records takes in the server, and what a worker thread costs a batch
against answering it on the event loop. Side by side with the server as it was before (`--before`).

Real `arrival-serve` processes (one uvicorn process each, uvloop + httptools, as on the serving
instance) load benchmarks/serving.py's two models (a 100-tree random forest and a logistic regression
on 20 numeric features, 3 classes, fitted with the trainer's code) from an S3 stand-in, moto's server
in this process. The servers: *before*, the code of `--before` (a git ref, default `main`; its files
from `git archive`, run with this environment's packages); *after*, this checkout as configured by
default; and this checkout with every prediction answered on the loop (*inline*), or in a worker
thread (*offloaded*). One server is measured at a time, in rounds; medians over the rounds. Writes
benchmarks/results/serving_batches.md.

    uv run python benchmarks/serving_batches.py [--rounds 3] [--seconds 10] [--before main]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.capture import wait_ready  # noqa: E402
from benchmarks.serving import (  # noqa: E402
    FEATURES,
    arrival_serve_env,
    machine,
    publish_champion,
    running,
    s3_stand_in,
)
from localcloud.processes import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving_batches.md"
MODELS_BUCKET = "bench-models"
MODELS = {"bench-forest": "random_forest", "bench-linear": "linear"}
HEALTH_BATCH = 10_000
BATCH = 1_000
SIZES = (1, 10, 30, 100, 300, 1000)
PING_EVERY = 0.01
TARGET_HEALTH_P99_MS = 20.0
TARGET_BATCH_MS = {"bench-linear": 5.0, "bench-forest": 12.0}


def publish_models() -> list[dict[str, float]]:
    """Both models fitted, exported and checked as the trainer's stages do, published as bundles."""
    fitted = [publish_champion(MODELS_BUCKET, name, family) for name, family in MODELS.items()]
    return fitted[0].records  # both models' data: the same rows (seed 1)


def checkout_of(ref: str, into: Path) -> Path:
    """The project's files at `ref`, unpacked (no worktree to clean up)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def ping(url: str, seconds: float, out: str) -> None:
    """`--ping`: GET /health every PING_EVERY seconds on one keep-alive connection, from a process of its
    own (a thread of the benchmark's would share its interpreter lock with the batch sender); each
    latency in ms to `out`. A request slower than the interval delays the next one, never bunches them."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    latencies, end = [], time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        began = time.perf_counter()
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - began) * 1000)
        assert response.status == 200, response.status
        next_at = max(next_at + PING_EVERY, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))
    Path(out).write_text(json.dumps(latencies))


def health_under_batches(url: str, body: bytes, seconds: float, scratch: Path) -> dict[str, float]:
    """/health's latency while one client sends 10,000-record forest batches back to back."""
    stop = threading.Event()
    batch_times: list[float] = []

    def send_batches() -> None:
        with httpx.Client(timeout=60, headers=_headers()) as client:
            while not stop.is_set():
                response = client.post(f"{url}/models/bench-forest/predict", content=body)
                assert response.status_code == 200, response.text[:300]
                batch_times.append(_server_ms(response))

    sender = threading.Thread(target=send_batches, name="batches")
    sender.start()
    out = scratch / f"ping-{time.monotonic_ns()}.json"
    try:
        command = [sys.executable, __file__, "--ping", url, str(seconds), str(out)]
        subprocess.run(command, check=True, timeout=seconds + 60)
    finally:
        stop.set()
        sender.join()
    latencies = json.loads(out.read_text())
    return {
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "max": max(latencies),
        "pings": len(latencies),
        "batches": len(batch_times),
        "batch_ms": statistics.median(batch_times) if batch_times else float("nan"),
    }


def health_alone(url: str, seconds: float, scratch: Path) -> dict[str, float]:
    out = scratch / f"ping-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, __file__, "--ping", url, str(seconds), str(out)], check=True)
    latencies = json.loads(out.read_text())
    return {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def server_times(url: str, model: str, body: bytes, requests: int) -> tuple[float, float]:
    """Median Server-Timing (the app's own time) and round trip, in ms, after 5 warm-up requests."""
    own, trips = [], []
    with httpx.Client(timeout=60, headers=_headers()) as client:
        for index in range(requests + 5):
            began = time.perf_counter()
            response = client.post(f"{url}/models/{model}/predict", content=body)
            trip = (time.perf_counter() - began) * 1000
            assert response.status_code == 200, response.text[:300]
            if index >= 5:
                own.append(_server_ms(response))
                trips.append(trip)
    return statistics.median(own), statistics.median(trips)


def _headers() -> dict[str, str]:
    return {"content-type": "application/json", "x-api-key": os.environ["ARRIVAL_API_KEY"]}


def _server_ms(response: httpx.Response) -> float:
    return float(response.headers["server-timing"].split("dur=", 1)[1])


def where_time_goes(records: list[dict[str, float]], runs: int = 50) -> dict[str, dict[str, float]]:
    """A batch of 1,000's answer, piece by piece, in process on this checkout's code (ms, the median
    of `runs` in the CPU time of the thread)."""
    from prometheus_client import CollectorRegistry
    from starlette.requests import Request

    from serving.app import PREDICT, _answer_in_worker, answer_predict, read_predict, write_predict
    from serving.capture import CaptureWriter
    from serving.offload import Budget, Offloaded
    from serving.store import ModelStore

    offloaded = Offloaded(2, budget_seconds=60)
    no_capture = CaptureWriter(
        None, rate=0, batch_records=1, flush_seconds=1, max_queued_bytes=1, registry=CollectorRegistry()
    )
    request = Request({"type": "http", "headers": []})

    store = ModelStore(MODELS_BUCKET, max_batch=HEALTH_BATCH)
    store.refresh()
    body = json.dumps({"records": records[:BATCH]}).encode()
    pieces: dict[str, dict[str, float]] = {}
    for name in MODELS:
        model = store.models[name]
        decoded = read_predict(model, body)
        inputs = model.build_inputs(decoded.records)
        predictions = model.predict(decoded.records)

        def timed(call: Any, clock: Any = time.thread_time) -> float:
            spent = []
            for _ in range(runs):
                began = clock()
                call()
                spent.append(clock() - began)
            return statistics.median(spent) * 1000

        def in_worker(m: Any = model) -> bytes:
            budget = Budget(time.perf_counter() + 60)
            return _answer_in_worker(m, body, PREDICT, request, no_capture, offloaded.helpers, budget)

        pieces[name] = {
            "validate": timed(lambda m=model: read_predict(m, body)),
            "tensors": timed(lambda m=model, d=decoded: m.build_inputs(d.records)),
            "onnx": timed(lambda m=model, i=inputs: m.session._sess.run(m.output_names, i, None)),
            "write": timed(lambda m=model, p=predictions: write_predict(m, p, True)),
            "whole": timed(lambda m=model: answer_predict(m, body)),
            # Wall-clock: the helper thread's CPU is not the worker's.
            "worker": timed(in_worker, time.perf_counter),
        }
    offloaded.shutdown()
    return pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="each /health run")
    parser.add_argument("--requests", type=int, default=100, help="requests per server-time figure")
    parser.add_argument("--before", default="main", help="the git ref measured as *before*")
    parser.add_argument("--ping", nargs=3, metavar=("URL", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.ping:
        ping(options.ping[0], float(options.ping[1]), options.ping[2])
        return
    started = time.monotonic()
    with s3_stand_in(MODELS_BUCKET):
        records = publish_models()
        health_body = json.dumps({"records": (records * 2)[:HEALTH_BATCH]}).encode()
        batch_body = json.dumps({"records": records[:BATCH]}).encode()
        size_bodies = {size: json.dumps({"records": records[:size]}).encode() for size in SIZES}
        pieces = where_time_goes(records)
        servers: dict[str, tuple[str, dict[str, str]]] = {}
        with (
            tempfile.TemporaryDirectory(prefix="arrival-batches-bench-") as scratch_name,
            ExitStack() as stack,
        ):
            scratch = Path(scratch_name)
            before = checkout_of(options.before, scratch / "before")
            variants = {
                "before": {"PYTHONPATH": str(before)},
                "after": {},
                "inline": {"ARRIVAL_SERVING_OFFLOAD_BODY_BYTES": str(10**9)},
                "offloaded": {"ARRIVAL_SERVING_OFFLOAD_BODY_BYTES": "0"},
            }
            for name, extra in variants.items():
                port = free_port()
                env = arrival_serve_env(
                    port, MODELS_BUCKET, {"ARRIVAL_SERVING_MAX_BATCH": str(HEALTH_BATCH), **extra}
                )
                # -P: the working directory (this checkout) must not come before *before*'s PYTHONPATH.
                command = [sys.executable, "-P", "-c", "from serving.main import main; main()"]
                stack.enter_context(running(command, scratch / f"{name}.log", env))
                servers[name] = (f"http://127.0.0.1:{port}", extra)
            for url, _ in servers.values():
                wait_ready(url)
            measured: dict[str, list[Any]] = {}
            for round_number in range(options.rounds):
                order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
                for name in order:
                    url = servers[name][0]
                    print(f"round {round_number + 1}: {name}", flush=True)  # noqa: T201
                    measured.setdefault("load", []).append(os.getloadavg()[0])
                    if name in ("before", "after"):
                        measured.setdefault(f"{name} health alone", []).append(health_alone(url, 3, scratch))
                        under = health_under_batches(url, health_body, options.seconds, scratch)
                        measured.setdefault(f"{name} health", []).append(under)
                        for model in MODELS:
                            times = server_times(url, model, batch_body, options.requests)
                            measured.setdefault(f"{name} {model}", []).append(times)
                    if name in ("inline", "offloaded"):
                        for size, body in size_bodies.items():
                            times = server_times(url, "bench-forest", body, options.requests)
                            measured.setdefault(f"{name} {size}", []).append(times)
    write_results(options, measured, pieces, time.monotonic() - started)


def _median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def write_results(
    options: argparse.Namespace,
    measured: dict[str, list[Any]],
    pieces: dict[str, dict[str, float]],
    seconds: float,
) -> None:
    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else f"**missed** by {value / target - 1:.0%}"

    health = {name: measured[f"{name} health"] for name in ("before", "after")}
    p99_after = _median_of(health["after"], "p99")
    rows = [
        f"| `/health` p99 while 10,000-record forest batches run, after | <= {TARGET_HEALTH_P99_MS:g} ms "
        f"| {p99_after:.1f} ms (before: {_median_of(health['before'], 'p99'):.1f} ms) "
        f"| {verdict(p99_after, TARGET_HEALTH_P99_MS)} |"
    ]
    for model, target in TARGET_BATCH_MS.items():
        after = statistics.median(own for own, _ in measured[f"after {model}"])
        before = statistics.median(own for own, _ in measured[f"before {model}"])
        rows.append(
            f"| {model}: batch of 1,000, server time (median), after | <= {target:g} ms | {after:.2f} ms "
            f"(before: {before:.2f} ms; after / before {after / before:.2f}) | {verdict(after, target)} |"
        )
    health_rows = []
    for name in ("before", "after"):
        runs, alone = health[name], measured[f"{name} health alone"]
        keys = ("p50", "p99", "max", "pings", "batches", "batch_ms")
        figures = {key: _median_of(runs, key) for key in keys}
        health_rows.append(
            f"| {name} | {_median_of(alone, 'p50'):.2f} | {_median_of(alone, 'p99'):.2f} "
            f"| {figures['p50']:.2f} | {figures['p99']:.2f} | {figures['max']:.1f} | {figures['pings']:.0f} "
            f"| {figures['batches']:.0f} | {figures['batch_ms']:.1f} |"
        )
    batch_rows = []
    for model in MODELS:
        cells = []
        for name in ("before", "after"):
            own = statistics.median(own for own, _ in measured[f"{name} {model}"])
            trip = statistics.median(trip for _, trip in measured[f"{name} {model}"])
            cells.append(f"{own:.2f} | {trip:.2f}")
        batch_rows.append(f"| {model} | {' | '.join(cells)} |")
    size_rows = []
    for size in SIZES:
        inline = statistics.median(own for own, _ in measured[f"inline {size}"])
        offloaded = statistics.median(own for own, _ in measured[f"offloaded {size}"])
        body = len(json.dumps({"records": [dict.fromkeys(FEATURES, -1.2345)] * size}))
        size_rows.append(
            f"| {size:,} | {body / 1024:.1f} | {inline:.3f} | {offloaded:.3f} | {offloaded - inline:+.3f} "
            f"| {offloaded / inline:.2f} |"
        )
    piece_rows = [
        f"| {model} | {p['validate']:.2f} | {p['tensors']:.2f} | {p['onnx']:.2f} | {p['write']:.2f} "
        f"| {p['whole']:.2f} | {p['worker']:.2f} |"
        for model, p in pieces.items()
    ]
    from importlib.metadata import version

    command = (
        f"uv run python benchmarks/serving_batches.py --rounds {options.rounds} "
        f"--seconds {options.seconds:g} --requests {options.requests} --before {options.before}"
    )
    packages = f"orjson {version('orjson')}, pydantic {version('pydantic')}"
    batch_kb = len(json.dumps({"records": [dict.fromkeys(FEATURES, -1.2345)] * BATCH})) / 1e3
    lines = [
        "# Large batches: the event loop, and a batch's server time",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d')} (took {seconds / 60:.1f} min). {machine()}; {packages}.",
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        f"The machine's load (1-minute average, as each server's turn began) ranged from "
        f"{min(measured['load']):.1f} to {max(measured['load']):.1f} on its {os.cpu_count()} cores: other "
        "programs took cores from the servers, so wall-clock figures here hold waits for a core, which "
        "the in-process CPU times below do not.",
        "",
        "## Targets",
        "",
        "| measure | target | measured | verdict |",
        "|---|---|---|---|",
        *rows,
        "",
        "## /health while 10,000-record forest batches run",
        "",
        f"One client sends `POST /models/bench-forest/predict` with 10,000 records "
        f"({HEALTH_BATCH * 310 / 1e6:.1f} MB) back to back, while another process asks `GET /health` every "
        f"{PING_EVERY * 1000:g} ms on a keep-alive connection for {options.seconds:g} s (a slow answer "
        "delays the next ask, it never bunches them), and the same for 3 s with no batch (*alone*). "
        "Medians over the rounds of each run's figures; ms. *batch* is the batches' own server time.",
        "",
        "| server | alone p50 | alone p99 | p50 | p99 | max | pings | batches | batch, ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *health_rows,
        "",
        "## A batch of 1,000 records",
        "",
        f"`POST /models/<model>/predict` with 1,000 records ({batch_kb:.0f} kB), {options.requests} "
        "requests after 5 warm-up ones, one at a time on a keep-alive connection: the app's own time "
        "(`Server-Timing`: body read, validation, inference, JSON) and the round trip on localhost. "
        "Medians over the rounds of each run's median; ms.",
        "",
        "| model | before: server | before: round trip | after: server | after: round trip |",
        "|---|---|---|---|---|",
        *batch_rows,
        "",
        "Where a batch of 1,000's time goes, in process on this checkout's code (the CPU time of the thread, "
        "median of 50; ms): validating the body (msgspec, from the JSON bytes, for a valid body), "
        "the records to one [N, 1] "
        "tensor per feature, the ONNX run (one intra-op thread, as served), the answer's JSON (probabilities "
        "as one object per record), and the whole answer (`serving.app.answer_predict`, as on the loop); "
        "then the whole answer as a worker gives it (`serving.app._answer_in_worker`: validated in parts, "
        "the ONNX run in two halves side by side, one on a helper thread), in wall-clock time.",
        "",
        "| model | validate | tensors | ONNX run | JSON | whole, on the loop | whole, in a worker (wall) |",
        "|---|---|---|---|---|---|---|",
        *piece_rows,
        "",
        "## On the loop, or in a worker thread",
        "",
        "bench-forest's server time by batch size, this checkout with every body answered on the event "
        "loop (*inline*, `ARRIVAL_SERVING_OFFLOAD_BODY_BYTES` huge) and with every body answered in a "
        "worker thread (*offloaded*, 0); medians as above, ms. The default, 16 KiB, offloads from about 50 "
        "such records up.",
        "",
        "| records | body KiB | inline | offloaded | difference | offloaded / inline |",
        "|---|---|---|---|---|---|",
        *size_rows,
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
