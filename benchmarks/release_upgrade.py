"""Release upgrade under load: a new release reaches the serving instance while wrk sends predictions.

A local cloud and a deployed stack (one serving instance, one worker per core) serve iris. For each
run, a new release of the checkout (the same code and locks, one comment added, so another version)
is published, and wrk sends `POST /models/iris/predict` on 16 connections, one record a request.
Five seconds in, the stack is deployed with the new release, as `arrival deploy` does. The instance
agent, as arrival-boot's timer on EC2, sees the stack settle on it, installs it, and restarts the
server from it on the socket it holds: the old server drains, the new one loads its models, then
answers what waited in the socket's backlog (serving/listening.py). wrk runs on until well after
every worker answers with the new release.

Failed requests are wrk's non-2xx answers and its socket errors (connect, read, write, and timeouts
at 10 s). Target: 0. The longest request is where the restart shows.

Starts its own local cloud on free ports. Needs wrk (Debian/Ubuntu package `wrk`).

    uv run python benchmarks/release_upgrade.py [--runs 3] [--connections 16] [--seconds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.instances import seconds_until  # noqa: E402
from benchmarks.serving import LUA  # noqa: E402
from benchmarks.training import log_in_to_mlflow, point_sdks_at  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import serving_bundles  # noqa: E402
from tests.releases import build_changed_release, publish_to_deploy_bucket  # noqa: E402

STACK = "arrival-release-bench"
RESULTS = ROOT / "benchmarks" / "results" / "release_upgrade.md"
IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LOAD_BEFORE_DEPLOY_SECONDS = 5


def releases_answering(url: str) -> set[str]:
    """The releases /health reports on a few fresh connections (each may reach another worker)."""
    found = set()
    for _ in range(4):
        try:
            found.add(
                httpx.get(f"{url}/health", headers={"connection": "close"}, timeout=2).json()["release"]
            )
        except httpx.TransportError:
            found.add("no answer")
    return found


def iris_answers(url: str, key: str) -> bool:
    try:
        response = httpx.post(
            f"{url}/models/iris/predict", json=IRIS_RECORD, headers={"x-api-key": key}, timeout=2
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


def stack_parameters(outputs_login: dict[str, str], release: str | None = None) -> dict[str, str]:
    # The poll is the safety net; the test of the switch is the restart, not a reload.
    parameters = {**outputs_login, "ServingPollSeconds": "2"}
    if release is not None:
        parameters["ReleaseVersion"] = release
    return parameters


class Probe(threading.Thread):
    """One more client beside wrk, on a kept-alive connection, timing each of its requests: wrk's
    latency percentiles are not those of every request (its mean latency, times its requests,
    exceeds its connections times its seconds), so the stall is read here."""

    def __init__(self, url: str, key: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=url, headers={"x-api-key": key, "content-type": "application/json"}, timeout=10
        )
        self.body = body
        self.latencies: list[float] = []
        self.failed = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            started = time.monotonic()
            try:
                answered = self.client.post("/models/iris/predict", content=self.body).status_code == 200
            except httpx.TransportError:
                answered = False
            self.latencies.append(time.monotonic() - started)
            self.failed += not answered

    def stop(self) -> None:
        self._done.set()
        self.join(30)
        self.client.close()


def one_run(
    url: str,
    key: str,
    body: Path,
    login: dict[str, str],
    scratch: Path,
    run: int,
    options: argparse.Namespace,
) -> dict[str, float]:
    release = build_changed_release(scratch / f"release-{run}", f"release benchmark, run {run}")
    publish_to_deploy_bucket(boto3.session.Session(), release)
    command = [
        "wrk",
        "-t1",
        f"-c{options.connections}",
        f"-d{options.seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"{url}/models/iris/predict",
    ]
    probe = Probe(url, key, body.read_bytes())
    probe.start()
    load = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "ARRIVAL_WRK_BODY": str(body)}
    )
    time.sleep(LOAD_BEFORE_DEPLOY_SECONDS)  # predictions answered before the release, measured
    started = time.monotonic()
    deploy_stack(
        ROOT / "template.yaml", STACK, stack_parameters(login, release.version), vendor_dependencies=False
    )
    deployed = time.monotonic() - started
    switched = deployed + seconds_until(lambda: releases_answering(url) == {release.version}, 120)
    output, _ = load.communicate(timeout=options.seconds + 60)
    probe.stop()
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    result = {
        "requests": data["requests"],
        "non_2xx": data["non_2xx"],
        "socket_errors": data["connect"] + data["read"] + data["write"] + data["timeout"],
        "max_ms": data["max_us"] / 1000,
        "probe_requests": len(probe.latencies),
        "probe_failed": probe.failed,
        "probe_p50_ms": statistics.median(probe.latencies) * 1000,
        "probe_max_ms": max(probe.latencies) * 1000,
        "deploy_s": deployed,
        "switch_s": switched,
    }
    print(f"run {run + 1}: {result}", flush=True)  # noqa: T201
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=40)
    options = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="arrival-release-bench-"))
    settings = LocalCloudSettings(
        state_dir=state, aws_port=free_port(), mlflow_port=free_port(), api_port=free_port()
    )
    point_sdks_at(settings, ARRIVAL_API_PORT=str(settings.api_port))
    control.up(settings)
    results = []
    try:
        login = log_in_to_mlflow(settings, STACK)
        outputs = deploy_stack(
            ROOT / "template.yaml", STACK, stack_parameters(login), vendor_dependencies=False
        )
        serving_bundles.publish(
            boto3.client("s3"),
            serving_bundles.trained("iris", "iris"),
            "1",
            bucket=outputs["ModelsBucketName"],
        )
        secret = boto3.client("secretsmanager").get_secret_value(SecretId=outputs["ServingApiKeySecretArn"])
        key = secret["SecretString"]
        os.environ["ARRIVAL_API_KEY"] = key
        url = settings.api_url
        seconds_until(lambda: iris_answers(url, key), 300)
        body = state / "record.json"
        body.write_text(json.dumps(IRIS_RECORD))
        for run in range(options.runs):
            results.append(one_run(url, key, body, login, state, run, options))
    finally:
        control.down(settings)
    write(results, options)


def write(results: list[dict[str, float]], options: argparse.Namespace) -> None:
    rows = [
        f"| {number} | {r['requests']:,.0f} | {r['non_2xx']:.0f} | {r['socket_errors']:.0f} "
        f"| {r['max_ms']:,.0f} | {r['probe_requests']:,.0f} | {r['probe_failed']:.0f} "
        f"| {r['probe_p50_ms']:.1f} | {r['probe_max_ms']:,.0f} | {r['deploy_s']:.1f} | {r['switch_s']:.1f} |"
        for number, r in enumerate(results, 1)
    ]
    failed = sum(r["non_2xx"] + r["socket_errors"] + r["probe_failed"] for r in results)
    text = (
        "# Release upgrade under load\n\n"
        f"`uv run python benchmarks/release_upgrade.py --runs {options.runs} --connections "
        f"{options.connections} --seconds {options.seconds}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, wrk, LocalStack, MLflow and the server all on this machine. One serving "
        "instance, one worker per core. Each run deploys a new release of the same code "
        f"{LOAD_BEFORE_DEPLOY_SECONDS} s into a {options.seconds}-second wrk run on {options.connections} "
        "connections (`POST /models/iris/predict`, one record), and a probe, one more client on a "
        "kept-alive connection, times each of its own requests meanwhile (wrk's latency percentiles "
        "are not every request's: its mean latency times its requests exceeds its connections times "
        "its seconds). Failed: wrk's non-2xx answers and socket errors (timeouts at 10 s), and the "
        "probe's errors and non-200 answers. Deploy: the stack update, from the call to its end. "
        "Switch: from the call until every answer of `/health` on fresh connections names the new "
        "release. Target: 0 failed requests.\n\n"
        "| run | wrk requests | non-2xx | socket errors | wrk's longest, ms | probe requests | probe failed "
        "| probe p50 ms | probe's longest, ms | deploy s | switch s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"**Failed requests, all runs: {failed}.** The longest request (median of the runs' probes: "
        f"{statistics.median(r['probe_max_ms'] for r in results):,.0f} ms) is the restart: the old "
        "server drains, the new one starts and loads its models, and meanwhile requests wait in the "
        "socket's backlog.\n"
    )
    RESULTS.write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
