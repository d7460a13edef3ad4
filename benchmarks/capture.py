"""Data capture's cost to serving: the same model server with capture off and on at the default rate
(the contract's monitoring.sample_rate, 0.1), measured side by side in one run.

Two `arrival-serve` processes (one uvicorn process each, as on the serving instance) load the same
bundle from an S3 stand-in (moto's server, in this process): one with `ARRIVAL_SERVING_CAPTURE_RATE=0`,
the other with capture to a bucket at the contract's rate. wrk (`-t1`, 16 connections, one record per
request, benchmarks/serving.lua) loads one server at a time, in rounds that alternate which server
goes first; the figures are the medians over the rounds. The model is benchmarks/serving.py's
bench-forest: a 100-tree random forest on 20 numeric features, 3 classes. Writes
benchmarks/results/capture.md.

    uv run python benchmarks/capture.py [--rounds 6] [--seconds 10]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    BIN,
    Load,
    arrival_serve_env,
    median,
    publish_champion,
    running,
    s3_stand_in,
    wrk,
)
from localcloud.processes import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "capture.md"
MODEL = "bench-forest"
MODELS_BUCKET, CAPTURE_BUCKET = "bench-models", "bench-capture"
IN_PROCESS_BUCKET = "bench-capture-in-process"  # apart, so the servers' bucket counts only theirs
CONNECTIONS = 16
TARGET_LOSS = 0.05  # issue 11: capture must cost the serving benchmark less than 5% throughput
# benchmarks/results/serving.md: bench-forest, 16 connections, measured on a quiet machine.
SERVING_BENCHMARK_RPS = 6902


def publish_model(scratch: Path) -> list[dict[str, float]]:
    """bench-forest fitted, exported and checked as the trainer's stages do, published as its bundle."""
    fitted = publish_champion(MODELS_BUCKET, MODEL, "random_forest")
    (scratch / "record.json").write_bytes(fitted.record_body)
    return fitted.records


def capture_counts(metrics_text: str) -> dict[str, float]:
    """Records written, dropped and lost so far, and queued now, from the server's /metrics."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("arrival_capture_records_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("arrival_capture_queued_records "):
            counts["queued"] = float(line.rsplit(" ", 1)[1])
    return counts


def in_process_costs(records: list[dict[str, float]], calls: int = 200_000) -> dict[str, float]:
    """CPU time of the capture code itself, on the thread that runs it (not disturbed by other programs
    as wall-clock throughput is): the request path's `offer` at the default rate, per request, and
    the writer's flush (gzip, the PUT's client side), per record written."""
    from prometheus_client import CollectorRegistry
    from starlette.requests import Request

    from serving.capture import CaptureWriter
    from serving.store import ModelStore

    store = ModelStore(MODELS_BUCKET, max_batch=10_000)
    store.refresh()
    model = store.models[MODEL]
    request = Request({"type": "http", "headers": []})
    one = [records[0]]
    one_body = len(json.dumps(records[0]))
    predictions = model.predict(one)
    writer = CaptureWriter(
        IN_PROCESS_BUCKET,
        rate=None,
        batch_records=10**9,
        flush_seconds=3600,
        max_queued_bytes=10**12,
        registry=CollectorRegistry(),
    )
    began = time.thread_time()
    for _ in range(calls):
        writer.offer(model, one, predictions, request, one_body)
    offer_us = (time.thread_time() - began) / calls * 1e6
    writer.flush()
    # Distinct records, as real traffic: one flush of 5000 single-record requests, an object as the
    # server's default batch makes.
    for index in range(5000):
        record = [records[index % len(records)]]
        writer.rate = 1.0
        writer.offer(model, record, model.predict(record), request, one_body)
    began = time.thread_time()
    written = writer.flush()
    flush_us = (time.thread_time() - began) / max(written, 1) * 1e6
    return {"offer_us": offer_us, "flush_us_per_record": flush_us}


def captured_objects(s3: Any) -> tuple[int, int, int]:
    """Objects, records and compressed bytes in the capture bucket."""
    listed = s3.list_objects_v2(Bucket=CAPTURE_BUCKET).get("Contents", [])
    records = sum(
        len(json.loads(line)["inputs"])
        for e in listed
        for line in gzip.decompress(
            s3.get_object(Bucket=CAPTURE_BUCKET, Key=e["Key"])["Body"].read()
        ).splitlines()
    )
    return len(listed), records, sum(entry["Size"] for entry in listed)


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of one wrk run per server")
    parser.add_argument("--seconds", type=int, default=10, help="each measured wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="wrk warm-up of each server before the rounds")
    parser.add_argument(
        "--on-rate",
        default=None,
        help="the *on* server's ARRIVAL_SERVING_CAPTURE_RATE (default: unset, the contract's); "
        "0 makes an A/A run, both servers alike, to see what the two processes differ by without capture",
    )
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it (Debian/Ubuntu: `sudo apt-get install wrk`) and rerun")
    started = time.monotonic()
    with s3_stand_in(MODELS_BUCKET, CAPTURE_BUCKET, IN_PROCESS_BUCKET):
        s3 = boto3.client("s3")
        with (
            tempfile.TemporaryDirectory(prefix="arrival-capture-bench-") as scratch_name,
            ExitStack() as stack,
        ):
            scratch = Path(scratch_name)
            records = publish_model(scratch)
            costs = in_process_costs(records)
            servers: dict[str, tuple[str, int]] = {}
            for name, rate in (("off", "0"), ("on", options.on_rate)):
                port = free_port()
                env = arrival_serve_env(
                    port, MODELS_BUCKET, {"ARRIVAL_SERVING_CAPTURE_BUCKET": CAPTURE_BUCKET}
                )
                if rate is not None:
                    env["ARRIVAL_SERVING_CAPTURE_RATE"] = rate
                else:
                    env.pop("ARRIVAL_SERVING_CAPTURE_RATE", None)
                process = stack.enter_context(
                    running([str(BIN / "arrival-serve")], scratch / f"server-{name}.log", env)
                )
                servers[name] = (f"http://127.0.0.1:{port}", process.pid)
            for url, _ in servers.values():
                wait_ready(url)
            body = scratch / "record.json"
            for url, pid in servers.values():
                wrk(f"{url}/models/{MODEL}/predict", body, CONNECTIONS, options.warmup, pid)
            warmed = capture_counts(
                httpx.get(
                    f"{servers['on'][0]}/metrics", headers={"x-api-key": os.environ["ARRIVAL_API_KEY"]}
                ).text
            )
            loads: dict[str, list[Load]] = {"off": [], "on": []}
            order_of_rounds = []
            for round_number in range(options.rounds):
                order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
                order_of_rounds.append(order)
                for name in order:
                    url, pid = servers[name]
                    load = wrk(f"{url}/models/{MODEL}/predict", body, CONNECTIONS, options.seconds, pid)
                    loads[name].append(load)
                    done = f"round {round_number + 1} {name}: {load.requests_per_second:,.0f} req/s"
                    print(done, flush=True)  # noqa: T201
            counted = capture_counts(
                httpx.get(
                    f"{servers['on'][0]}/metrics", headers={"x-api-key": os.environ["ARRIVAL_API_KEY"]}
                ).text
            )
            requests_on = sum(load.requests_per_second * options.seconds for load in loads["on"])
            # Stopping the servers (ExitStack) ends their lifespans: the "on" server writes what it holds.
        objects, captured, stored = captured_objects(s3)
    stored_in_s3 = (objects, captured, stored)
    write_results(options, loads, order_of_rounds, counted, warmed, requests_on, stored_in_s3, costs, started)


def cpu_us_per_request(load: Load) -> float:
    return load.server_cores / load.requests_per_second * 1e6


def write_results(
    options: argparse.Namespace,
    loads: dict[str, list[Load]],
    orders: list[tuple[str, str]],
    counted: dict[str, float],
    warmed: dict[str, float],
    requests_on: float,
    stored_in_s3: tuple[int, int, int],
    costs: dict[str, float],
    started: float,
) -> None:
    from importlib.metadata import version

    objects, records, stored = stored_in_s3
    off = [load.requests_per_second for load in loads["off"]]
    on = [load.requests_per_second for load in loads["on"]]
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    # Each round's two runs are minutes apart at most, so what else loads the machine weighs on both
    # alike: the paired ratio cancels it, where a ratio of the two medians would not.
    ratio = median(ratios)
    loss = 1 - ratio
    # The middle half of the rounds' ratios: wider than the target, and the rounds cannot tell a 5%
    # loss from the machine's other load.
    quartiles = statistics.quantiles(ratios, n=4)
    spread = quartiles[2] - quartiles[0]
    if spread > TARGET_LOSS:
        verdict = f"inconclusive: the middle half of the rounds spans {spread:.1%}"
    else:
        verdict = "met" if loss < TARGET_LOSS else f"**missed** ({loss:.1%} lost)"
    # The server process's own CPU per answered request (all its threads, the writer's included). While
    # each server saturates its core, as in these runs, it moves with throughput and adds little; when a
    # server is not saturated (a client-bound run), it shows a cost that throughput would hide.
    cpu_us = {name: [cpu_us_per_request(load) for load in runs] for name, runs in loads.items()}
    cpu_ratios = [b / a for a, b in zip(cpu_us["off"], cpu_us["on"], strict=True)]
    cpu_ratio = median(cpu_ratios)
    cpu_quartiles = statistics.quantiles(cpu_ratios, n=4)
    cpu_spread = cpu_quartiles[2] - cpu_quartiles[0]
    if cpu_spread > TARGET_LOSS:
        process_verdict = f"inconclusive: the middle half of the rounds spans {cpu_spread:.1%}"
    else:
        process_verdict = "met" if cpu_ratio - 1 < TARGET_LOSS else f"**missed** ({cpu_ratio - 1:.1%} more)"
    process_row = (
        f"| the server process's CPU per request, on / off (median of the rounds' ratios) "
        f"| < {1 + TARGET_LOSS:.2f} | {cpu_ratio:.3f} ({median(cpu_us['on']):.0f} vs "
        f"{median(cpu_us['off']):.0f} µs; middle half of the rounds {cpu_quartiles[0]:.3f} to "
        f"{cpu_quartiles[2]:.3f}) | {process_verdict} |"
    )
    written = counted.get("written", 0) - warmed.get("written", 0)
    sampled = sum(counted.values()) - sum(warmed.values())
    flush_us = costs["flush_us_per_record"]
    per_request_us = costs["offer_us"] + 0.1 * flush_us
    estimated_loss = per_request_us * 1e-6 * median(off)
    period_us = 1e6 / median(off)
    dropped, lost = counted.get("dropped", 0), counted.get("lost", 0)
    loss_at_benchmark = per_request_us * 1e-6 * SERVING_BENCHMARK_RPS
    cpu_verdict = "met" if loss_at_benchmark < TARGET_LOSS else "**missed**"
    measured = f"{ratio:.3f} ({loss:+.1%} lost; medians {median(on):,.0f} vs {median(off):,.0f} req/s)"
    wall_row = (
        f"| throughput, capture on / off (median of the rounds' ratios) | loss < {TARGET_LOSS:.0%} "
        f"| {measured} | {verdict} |"
    )
    cpu_row = (
        f"| capture's CPU per request, at the serving benchmark's {SERVING_BENCHMARK_RPS:,} req/s "
        f"| loss < {TARGET_LOSS:.0%} | {per_request_us:.2f} µs: {loss_at_benchmark:.1%} | {cpu_verdict} |"
    )
    rows = "\n".join(
        f"| {index + 1} | {' then '.join(order)} | {a.requests_per_second:,.0f} "
        f"| {b.requests_per_second:,.0f} "
        f"| {b.requests_per_second / a.requests_per_second:.3f} "
        f"| {cpu_us_per_request(a):.0f} / {cpu_us_per_request(b):.0f} "
        f"| {a.p99_ms:.2f} | {b.p99_ms:.2f} "
        f"| {a.other_cores:.2f} / {b.other_cores:.2f} |"
        for index, (order, a, b) in enumerate(zip(orders, loads["off"], loads["on"], strict=True))
    )
    medians = {
        name: {field: median([getattr(load, field) for load in runs]) for field in ("p50_ms", "p99_ms")}
        for name, runs in loads.items()
    }
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    p50 = f"p50 {medians['off']['p50_ms']:.2f} / {medians['on']['p50_ms']:.2f} ms"
    p99 = f"p99 {medians['off']['p99_ms']:.2f} / {medians['on']['p99_ms']:.2f} ms"
    document = f"""# Data capture overhead

`uv run python benchmarks/capture.py --rounds {options.rounds} --seconds {options.seconds}` on
{datetime.now(UTC):%Y-%m-%d} (took {(time.monotonic() - started) / 60:.1f} min). {machine}; fastapi
{version("fastapi")}, uvicorn {version("uvicorn")}, onnxruntime {version("onnxruntime")}.

Two `arrival-serve` processes (one uvicorn process each, uvloop + httptools, no access log, as on the
serving instance) answer for the same bundle, `{MODEL}` (benchmarks/serving.py's 100-tree random
forest on 20 numeric features, 3 classes), loaded from an S3 stand-in (moto's server). *off*:
`ARRIVAL_SERVING_CAPTURE_RATE=0`; *on*: capture to a bucket at the default rate, the contract's
`monitoring.sample_rate` (0.1), written every 5000 records or 10 s by the server's writer thread as
gzip JSON Lines. wrk `-t1 -c{CONNECTIONS} -d{options.seconds}s`, one record per request
(`POST /models/{MODEL}/predict`, benchmarks/serving.lua), loads one server at a time, in {options.rounds}
rounds whose order alternates; each server had a {options.warmup} s warm-up first. Load generator and
servers share the machine's cores with whatever else runs on it (*others' cores*: the CPU the rest
of the machine used during each run, from /proc).

## Result

| measure | target | measured | verdict |
|---|---|---|---|
{wall_row}
{process_row}
{cpu_row}

The rounds' ratios range from {min(ratios):.3f} to {max(ratios):.3f}; the ratio of the two servers'
median req/s is {median(on) / median(off):.3f}.
Latency medians over the rounds, off / on: {p50}, {p99}.

## Rounds

| round | order | off req/s | on req/s | on / off | server µs CPU a request (off / on) \
| off p99 ms | on p99 ms | others' cores (off / on) |
|---|---|---|---|---|---|---|---|---|
{rows}

## The capture code's own CPU time

In process, on the bundle the servers loaded, in the CPU time of the thread that runs the code (which
other programs on the machine do not inflate as they do wall-clock throughput): `CaptureWriter.offer`
at the default rate, as the request path calls it once per answered request, **{costs["offer_us"]:.2f}
µs** a request (the coin toss; for one request in ten, the append); the writer
thread's flush of 5000 distinct single-record requests (their JSON lines, gzip at level 1, the
`PutObject` call's client side), **{flush_us:.1f} µs** a record written. At the default rate
that is {per_request_us:.2f} µs of CPU per request, on a server whose one process answers a
request every {period_us:.0f} µs here: an expected loss of **{estimated_loss:.1%}** of
throughput; at the serving benchmark's
{SERVING_BENCHMARK_RPS:,} req/s (benchmarks/results/serving.md, bench-forest, 16 connections, a quiet
machine), **{loss_at_benchmark:.1%}**. On a shared machine this resolves
the target where the rounds cannot: compare their spread with an A/A control (`--on-rate 0`).

## What was captured

During the measured rounds the *on* server answered {requests_on:,.0f} requests and sampled
{sampled:,.0f} of them ({sampled / max(requests_on, 1):.1%}). Its writer thread wrote {written:,.0f}
records while under load (with those the warm-up left queued); {dropped:,.0f} were dropped for a
full queue and {lost:,.0f} lost to a failed write. After the servers stopped (the last records are
written at shutdown), the bucket held {objects} objects, {records:,} records, {stored / 1024:,.0f} KiB
of gzip ({stored / max(records, 1):.0f} bytes a record; wrk sends the same record every time, which
gzip compresses far better than real traffic).
"""
    RESULTS.write_text(document)
    print(document)  # noqa: T201


if __name__ == "__main__":
    main()
