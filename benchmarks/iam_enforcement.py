"""IAM enforcement overhead (issue 17's target: at most 10% on the chain benchmark's warm
upload -> champion and on the ingest benchmark), measured side by side in one run, with the local
cloud's `iam_enforcement` off and on:

- chain: benchmarks/training.py's warm upload -> champion for 5,000 rows (its `Bench`, its stack and
  parameters, the product's default worker settings, a trainer already running);
- ingest: benchmarks/ingest.py's 5,000-row file, upload -> accepted (wall) and the ingest Lambda's
  duration (its stack with template.yaml's defaults, trainer instances recorded but not booted).

Each benchmark and side gets a local cloud of its own on free ports, in a process of its own,
deployed as that benchmark deploys it, with one unmeasured warm-up (for the chain it brings the
trainer up); then `--runs` rounds, each running both sides on the same file, off first or on first
alternately. Each cloud is stopped in a `finally`. Reports medians per side and on / off, and writes
benchmarks/results/iam_enforcement.md.

    uv run python benchmarks/iam_enforcement.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import ingest, training  # noqa: E402
from localcloud import control  # noqa: E402
from localcloud.deploy import deploy_stack  # noqa: E402
from localcloud.processes import free_port  # noqa: E402
from localcloud.settings import LocalCloudSettings  # noqa: E402
from tests import datasets  # noqa: E402

ROWS = 5_000
TARGET = 1.10
BENCHES = ("chain", "ingest")
SIDES = ("off", "on")
MAIN_KEYS = {"total", "wall", "lambda"}
REPLY = "@iam-bench "  # marks the child's answers among its other output
PROBE_ROLE = "bench-iam-probe"
Run = Callable[[int], dict[str, float]]


def _settings(prefix: str, enforced: bool, **extra: Any) -> LocalCloudSettings:
    # The API port too: the default (8080) may be another engineer's cloud's on a shared machine.
    return LocalCloudSettings(
        state_dir=Path(tempfile.mkdtemp(prefix=prefix)),
        aws_port=free_port(),
        mlflow_port=free_port(),
        api_port=free_port(),
        iam_enforcement=enforced,
        **extra,
    )


def _enforcing(settings: LocalCloudSettings) -> bool:
    """Whether this cloud refuses a role what its policies do not allow: a role with no policy at all,
    assumed, asks for ListBuckets (the proof that this side talks to the cloud it thinks it does)."""
    iam, sts = boto3.client("iam"), boto3.client("sts")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName=PROBE_ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="probe")["Credentials"]
    s3 = boto3.client(
        "s3",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=settings.region,
    )
    try:
        s3.list_buckets()
    except ClientError as error:
        return bool(error.response["Error"]["Code"] == "AccessDenied")
    return False


def _refusals(settings: LocalCloudSettings) -> list[str]:
    """What the enforcement refused in this cloud, the probe's refusal aside: none in a clean run
    (a refused call would fail or retry, and measure something else)."""
    return [
        line
        for path in settings.state_dir.rglob("*.log")
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
        if "IAM enforcement:" in line
        and ("refused for" in line or " may not " in line)
        and PROBE_ROLE not in line
    ]


@contextlib.contextmanager
def chain_cloud(enforced: bool) -> Iterator[tuple[LocalCloudSettings, Run]]:
    """benchmarks/training.py's cloud and stack, a trainer already up (the warm-up brought it)."""
    settings = _settings("arrival-iam-chain-", enforced)
    # As benchmarks/training.py's main(); warm runs find the trainer still up.
    training.point_sdks_at(settings, ARRIVAL_WORKER_IDLE_SECONDS="3600")
    control.up(settings)
    try:
        outputs = deploy_stack(
            ROOT / "template.yaml",
            training.STACK,
            {"IngestTimeoutSeconds": "900", "IngestVisibilityTimeoutSeconds": "960"},
            vendor_dependencies=False,
        )
        bench = training.Bench(outputs, settings.mlflow_url, settings.cloud_id)
        bench.one_run(ROWS, seed=999)  # warm-up, not measured: brings a trainer up
        if not bench.live_trainers():
            raise RuntimeError("no trainer is up after the warm-up: the runs would not be warm")
        yield settings, lambda seed: bench.one_run(ROWS, seed)
    finally:
        control.down(settings)


def _ingest_once(s3: Any, logs: Any, outputs: dict[str, str], seed: int, seen: set[str]) -> dict[str, float]:
    """One file, as benchmarks/ingest.py's run() times it (its loop is inline there, so it is
    repeated here): upload -> listed in accepted.json, and the invocation's REPORT Duration."""
    body = ingest.iris_csv(ROWS, seed)
    expected = ingest.accepted_count(s3, outputs["ProcessedBucketName"]) + 1
    started = time.monotonic()
    s3.put_object(Bucket=outputs["RawBucketName"], Key=f"{ingest.MODEL}/iam-{seed}.csv", Body=body)
    while ingest.accepted_count(s3, outputs["ProcessedBucketName"]) < expected:
        if time.monotonic() - started > 900:
            raise TimeoutError(f"file {seed} was not accepted within 900 s")
        time.sleep(0.2)
    wall = time.monotonic() - started
    group = f"/aws/lambda/{outputs['IngestFunctionName']}"
    while True:
        try:
            found = logs.filter_log_events(logGroupName=group).get("events", [])
        except logs.exceptions.ResourceNotFoundException:  # logs land just after the result
            found = []
        for event in found:
            match = ingest.REPORT.search(event["message"])
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                return {"wall": wall, "lambda": float(match.group(2)) / 1000}
        time.sleep(0.2)


@contextlib.contextmanager
def ingest_cloud(enforced: bool) -> Iterator[tuple[LocalCloudSettings, Run]]:
    """benchmarks/ingest.py's cloud and stack: trainer instances recorded but not booted."""
    settings = _settings("arrival-iam-ingest-", enforced, agent_roles=[])
    training.point_sdks_at(settings)
    control.up(settings)
    try:
        outputs = deploy_stack(ROOT / "template.yaml", ingest.STACK, {}, vendor_dependencies=False)
        s3, logs = boto3.client("s3"), boto3.client("logs")
        s3.put_object(
            Bucket=outputs["ConfigBucketName"],
            Key=f"contracts/{ingest.MODEL}.yaml",
            Body=datasets.contract_yaml("iris", ingest.MODEL),
        )
        seen: set[str] = set()
        _ingest_once(s3, logs, outputs, 999, seen)  # warm-up, not measured: the function's cold start
        yield settings, lambda seed: _ingest_once(s3, logs, outputs, seed, seen)
    finally:
        control.down(settings)


def _reply(message: dict[str, Any]) -> None:
    print(REPLY + json.dumps(message), flush=True)  # noqa: T201


def serve(bench: str, side: str) -> None:
    """The child: brings up this side's cloud, then makes one run for each line the parent sends,
    until it closes stdin; the cloud goes down on the way out, whatever happens."""
    opener = chain_cloud if bench == "chain" else ingest_cloud
    with opener(side == "on") as (settings, one_run):
        _reply({"enforcing": _enforcing(settings)})
        for line in sys.stdin:
            _reply(one_run(int(line)))
        _reply({"refusals": _refusals(settings)})


class Side:
    """One benchmark's side in a process of its own, its cloud up until `close`.

    A process per side: the benchmarks point the SDKs at their cloud through process-wide
    environment (AWS_ENDPOINT_URL...), and boto3 clients, `get_*_settings` and MLflow keep what they
    read on first use (functools.cache, module globals); clearing each cache by hand would hold only
    as long as the list of caches did. A process of its own starts from nothing, so a side's requests
    can only go to its own cloud (and `_enforcing` checks that they do)."""

    def __init__(self, bench: str, side: str) -> None:
        self.label = f"{bench}, enforcement {side}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--case", f"{bench}:{side}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                answer: dict[str, Any] = json.loads(line[len(REPLY) :])
                return answer
            print(f"[{self.label}] {line}", end="", flush=True)  # noqa: T201
        raise RuntimeError(f"{self.label} ended (exit status {self.process.wait()})")

    def ready(self) -> dict[str, Any]:
        return self._answer()

    def run(self, seed: int) -> dict[str, float]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{seed}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> dict[str, Any]:
        """Ends the child (its cloud goes down) and returns its last word, if it had one."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            last = self._answer()
        except RuntimeError:
            last = {}
        self.process.wait()
        return last


def measure(bench: str, runs: int) -> dict[str, dict[str, Any]]:
    """Both sides of one benchmark, their runs interleaved: round i runs off then on, or on then off,
    alternately, on the same file (seed i). On a shared machine the load drifts over minutes; a
    side's cloud after the other's would measure the drift as much as the enforcement."""
    results: dict[str, dict[str, Any]] = {side: {"runs": []} for side in SIDES}
    sides: dict[str, Side] = {}
    try:
        for side in SIDES:  # one after the other: two clouds starting at once would crowd 2 cores
            sides[side] = Side(bench, side)
            results[side].update(sides[side].ready())
        for run in range(runs):
            for side in SIDES if run % 2 == 0 else SIDES[::-1]:
                results[side]["runs"].append({**sides[side].run(run), "load": _load()})
                shown = {k: round(v, 2) for k, v in results[side]["runs"][-1].items() if k in MAIN_KEYS}
                print(f"{bench} {side} run {run + 1}: {shown}", flush=True)  # noqa: T201
    except Exception as error:  # one benchmark failing still leaves the other's results
        print(f"{bench} failed: {error!r}", flush=True)  # noqa: T201
        for result in results.values():
            result["failed"] = repr(error)
    finally:
        for side, child in sides.items():
            results[side].update(child.close())
    return results


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _values(results: dict[str, dict[str, Any]], side: str, key: str) -> list[float]:
    return [run[key] for run in results[side]["runs"]]


def _paired_ratios(results: dict[str, dict[str, Any]], key: str) -> list[float]:
    """on / off of each round (the same file, minutes apart at most)."""
    pairs = zip(_values(results, "off", key), _values(results, "on", key), strict=False)
    return [on / off for off, on in pairs if off > 0]


def _cell(values: list[float], spread: bool = False) -> str:
    if not values:
        return "failed"
    median = f"{statistics.median(values):.2f} s"
    return f"{median} ({min(values):.2f} to {max(values):.2f})" if spread else median


def _ratio(off: float | None, on: float | None) -> str:
    return "-" if off is None or on is None or off == 0 else f"{on / off:.3f}"


def _verdict(ratio: str) -> str:
    if ratio == "-":
        return "not measured"
    return "met" if float(ratio) <= TARGET else f"**missed** (+{(float(ratio) - 1) * 100:.0f}%)"


HEADLINE = [
    ("chain", "total", "chain: warm upload -> champion, 5,000 rows"),
    ("ingest", "wall", "ingest: 5,000-row file, upload -> accepted (wall)"),
]
DETAILS = [
    ("ingest", "lambda", "ingest: the Lambda's duration (REPORT)"),
    *[
        ("chain", stage, f"chain: {stage}")
        for stage in training.STAGES
        if stage not in {"boot", "quiet period"}
    ],
    ("chain", "fit alone", "chain: fit alone (no AWS call: a gauge of the machine's load)"),
]


def _rows(results: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[str]]:
    headline, details = [], []
    for bench, key, label in HEADLINE:
        off, on = _values(results[bench], "off", key), _values(results[bench], "on", key)
        ratio = _ratio(_median(off), _median(on))
        paired = _median(_paired_ratios(results[bench], key))
        headline.append(
            f"| {label} | {_cell(off, spread=True)} | {_cell(on, spread=True)} | **{ratio}** | "
            f"{'-' if paired is None else f'{paired:.3f}'} | {_verdict(ratio)} |"
        )
    for bench, key, label in DETAILS:
        off, on = _values(results[bench], "off", key), _values(results[bench], "on", key)
        details.append(f"| {label} | {_cell(off)} | {_cell(on)} | {_ratio(_median(off), _median(on))} |")
    return headline, details


def _resolution(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """How far this run's noise reaches, next to the target's 10%."""
    parts = []
    for bench, key, _label in HEADLINE:
        rounds = _paired_ratios(results[bench], key)
        if rounds:
            parts.append(f"{bench}'s rounds range from {min(rounds):.2f} to {max(rounds):.2f}")
    gauge = _median(_paired_ratios(results["chain"], "fit alone"))
    if gauge is not None:
        parts.append(f"the chain's fit alone, which makes no AWS call, at {gauge:.2f} (median of the rounds)")
    if not parts:
        return "Nothing was measured."
    spans = [r for bench, key, _ in HEADLINE for r in _paired_ratios(results[bench], key)]
    if gauge is not None:
        spans.append(gauge)
    resolved = all(abs(ratio - 1) <= TARGET - 1 for ratio in spans)
    return f"Resolution: on / off, {'; '.join(parts)}. " + (
        "Every round stayed within 10%: the run resolves the target."
        if resolved
        else "Differences that large are the machine's load, not enforcement: this run cannot "
        "resolve a 10% difference, only show whether enforcement costs more than its noise."
    )


def _notes(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    notes = []
    for bench in BENCHES:
        for side in SIDES:
            result = results[bench][side]
            if "failed" in result:
                notes.append(
                    f"- {bench}, enforcement {side}: **failed** ({result['failed']}; see the console)."
                )
            if "enforcing" in result and result["enforcing"] != (side == "on"):
                notes.append(
                    f"- {bench}, enforcement {side}: the probe found enforcement "
                    f"{'on' if result['enforcing'] else 'off'}: this side did not measure what it says."
                )
            if result.get("refusals"):
                notes.append(
                    f"- {bench}, enforcement {side}: the enforcement refused {len(result['refusals'])} "
                    f"request(s), e.g. `{result['refusals'][0][-200:]}`."
                )
        key = "total" if bench == "chain" else "wall"
        rounds = zip(_values(results[bench], "off", key), _values(results[bench], "on", key), strict=False)
        for index, (off, on) in enumerate(rounds):
            first = "off" if index % 2 == 0 else "on"
            load = results[bench][first]["runs"][index]["load"]
            notes.append(
                f"- {bench}, round {index + 1} ({first} first, load {load}): off {off:.2f} s, "
                f"on {on:.2f} s, on / off {on / off:.3f}"
            )
    return notes


def _write(results: dict[str, dict[str, dict[str, Any]]], arguments: argparse.Namespace, load: str) -> Path:
    headline, details = _rows(results)
    text = "\n".join(
        [
            "# IAM enforcement overhead",
            "",
            f"`uv run python benchmarks/iam_enforcement.py --runs {arguments.runs}` on "
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, shared with other engineers' work "
            f"(1-minute load average {load}). Issue 17's target: enforcement costs at most 10% on the "
            "chain benchmark's warm upload -> champion and on the ingest benchmark.",
            "",
            "Each benchmark and side ran on a local cloud of its own (free ports, fresh state, a "
            "process of its own), deployed as the benchmark deploys it, `iam_enforcement` off or on "
            "and nothing else changed: *chain* is benchmarks/training.py's 5,000-row warm case (its "
            "`Bench`, a new model each run, the trainer already up), *ingest* benchmarks/ingest.py's "
            "5,000-row file (trainer instances recorded, not booted). One unmeasured warm-up per side "
            "(for the chain it starts the trainer; for ingest it takes the function's cold start); "
            f"then {arguments.runs} rounds, each running both sides on the same file, off first or on "
            "first alternately, while the other side's cloud stood idle. Medians in seconds. Before "
            "its runs, each side checked which cloud it talks to: a role with no policy, assumed, "
            "asking for ListBuckets, is refused with enforcement on and served with it off.",
            "",
            "On this 2-core machine, which other work shares, the absolute times move from run to run "
            "and from those in training.md and ingest.md: the ratio of the two sides is what this "
            "file is for, and the rounds interleave the sides so that a load that drifts over minutes "
            "weighs on both. *fit alone* below makes no AWS call: where its ratio is far from 1, the "
            "load differed between the sides.",
            "",
            "| measure | off: median (min to max) | on: median (min to max) | on / off (medians) "
            "| on / off (median of the rounds) | target <= 1.10 |",
            "|---|---|---|---|---|---|",
            *headline,
            "",
            _resolution(results),
            "",
            "The ingest wall (like the chain's *event delivery*) holds the event's way from the upload "
            "to the function (S3's notification, the queue, the event source mapping's poll) and "
            "benchmarks/ingest.py's 0.2 s polling of accepted.json, which vary from file to file on "
            "either side far more than the function's own run; the Lambda's duration is the steadier "
            "measure of the part enforcement touches (the function's calls, signed by its role).",
            "",
            "Where the time goes (medians of the same runs):",
            "",
            "| measure | off | on | on / off |",
            "|---|---|---|---|",
            *details,
            "",
            "What the overhead is from: with enforcement on, LocalStack runs every request signed with "
            "an assumed role's credentials (the Lambdas' execution roles, the trainer's instance "
            "profile) past `enforce_identity_policies` "
            "(localcloud/lambda_executor/src/arrival_lambda_executor/iam_enforcement.py) before its "
            "service: it looks the session up in STS's store, maps the operation to the IAM actions "
            "and resources it needs (iam_requests.py, which for some calls reads LocalStack's own "
            "stores: a launch template, an instance's tags, a stack's ARN), gathers the role's inline "
            "and attached policies from IAM's store and evaluates each action against them "
            "(iam_policy.py); the operator's calls, and LocalStack's internal ones, skip it.",
            "",
            "Rounds and anything odd:",
            "",
            *_notes(results),
            "",
        ]
    )
    output = ROOT / "benchmarks" / "results" / "iam_enforcement.md"
    output.write_text(text)
    return output


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--case", help="internal: serve one benchmark:side in this process")
    arguments = parser.parse_args()

    if arguments.case:
        serve(*arguments.case.split(":"))
        return

    load_before = _load()
    results = {}
    for bench in BENCHES:
        print(f"== {bench} (load {_load()})", flush=True)  # noqa: T201
        results[bench] = measure(bench, arguments.runs)
        print(json.dumps(results[bench]), flush=True)  # noqa: T201  # kept if the report fails
    output = _write(results, arguments, f"{load_before} before, {_load()} after")
    print(output.read_text())  # noqa: T201
    print(f"wrote {output}")  # noqa: T201


if __name__ == "__main__":
    main()
