"""Instance benchmark: how fast the serving instance's process comes back by itself.

Kills the server with SIGKILL (its supervisor, the unit's Restart=always, starts it again from the
installed release) and stops and starts its instance (the process starts again, without running user
data again), and times each until /health answers 200 again. Also times the first boot of the
server from a release never installed on this machine (the uv cache warm), and from an installed one.

Starts its own local cloud on free ports.

    uv run python benchmarks/instances.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.training import log_in_to_mlflow, point_sdks_at  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack  # noqa: E402
from localcloud.processes import cloud_processes, free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402

STACK = "arrival-instances-bench"


def server_pids(cloud_id: str) -> list[int]:
    return cloud_processes(cloud_id, "arrival-serve")


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def seconds_until(condition: Callable[[], bool], timeout: float) -> float:
    """How long until ``condition`` holds, polled every 20 ms; a deadline, never a blind wait."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="arrival-instances-bench-"))
    # The first boot of a release this machine has never installed: the agent installs into an
    # empty directory of its own (uv's cache stays warm, as on a machine that ran uv before).
    settings = LocalCloudSettings(
        state_dir=state,
        instances_dir=state / "instances",
        aws_port=free_port(),
        mlflow_port=free_port(),
        api_port=free_port(),
    )
    point_sdks_at(
        settings,
        ARRIVAL_API_PORT=str(settings.api_port),
        ARRIVAL_INSTANCES_DIR=str(settings.instance_installs),
    )
    control.up(settings)
    rows: list[str] = []
    try:
        started = time.monotonic()
        outputs = deploy_stack(
            ROOT / "template.yaml", STACK, log_in_to_mlflow(settings, STACK), vendor_dependencies=False
        )
        deployed = time.monotonic() - started
        url = settings.api_url
        first_boot = seconds_until(lambda: answers(url), 300)
        case = f"first boot, a release never installed here (deploy took {deployed:.1f} s before it)"
        rows.append(f"| {case} | 1 | {first_boot:.2f} |")

        killed = []
        for _ in range(arguments.runs):
            pids = server_pids(settings.cloud_id)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            seconds_until(lambda: not answers(url), 10)
            killed.append(seconds_until(lambda: answers(url), 60))
            print("SIGKILL -> answering", round(killed[-1], 2), flush=True)  # noqa: T201
        case = "server killed with SIGKILL -> answering again"
        rows.append(f"| {case} | {len(killed)} | **{statistics.median(killed):.2f}** |")

        ec2 = boto3.client("ec2")
        instance_id = outputs["ServingInstanceId"]
        restarted = []
        for _ in range(arguments.runs):
            ec2.stop_instances(InstanceIds=[instance_id])
            seconds_until(lambda: not server_pids(settings.cloud_id), 30)
            ec2.start_instances(InstanceIds=[instance_id])
            begun = time.monotonic()
            seconds_until(lambda: answers(url), 60)
            restarted.append(time.monotonic() - begun)
            print("start -> answering", round(restarted[-1], 2), flush=True)  # noqa: T201
        case = "instance stopped, then started -> answering (from StartInstances)"
        rows.append(f"| {case} | {len(restarted)} | **{statistics.median(restarted):.2f}** |")
    finally:
        control.down(settings)
    _write(rows, arguments)


def _write(rows: list[str], arguments: argparse.Namespace) -> None:
    text = (
        "# Instance benchmark: the serving process comes back by itself\n\n"
        f"`uv run python benchmarks/instances.py --runs {arguments.runs}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores. The local instance agent supervises the process as the systemd unit of "
        "`deploy/arrival-boot.sh` does on AWS (`Restart=always`, `RestartSec=1`). Seconds until `/health` "
        "answers 200, polled every 20 ms; medians. The first boot includes installing the server's locked "
        "requirements into a new virtualenv (uv's cache warm) and the release's wheel; later boots reuse "
        "them. Target: SIGKILL -> answering again within 10 s.\n\n"
        "| case | runs | seconds |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    (ROOT / "benchmarks" / "results" / "instances.md").write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
