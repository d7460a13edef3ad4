"""`arrival demo`: drop the sample dataset into the raw bucket and follow it through the chain."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from cli.contracts import put_contract
from cli.follow import Follower, FollowResult, follow_upload, upload
from cli.operations import wait_for

SAMPLES = Path(__file__).resolve().parent.parent / "contracts"
# Each stage's own wait used to be 2 minutes at most, training and the gate 5.
DEMO_TIMEOUT_SECONDS = 600


def timed_printer(console: Console) -> Callable[[str], None]:
    """Prints each step with the seconds since the first, so the operator sees where time goes."""
    started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[green]{time.monotonic() - started:6.2f} s[/green]  {message}")

    return say


def _get_json(
    url: str, api_key: str, body: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The API's answer and headers, or None while it does not answer yet (booting, loading)."""
    request = urllib.request.Request(  # noqa: S310  # the local cloud's own API
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "x-api-key": api_key},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return json.loads(response.read()), dict(response.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _serve_prediction(
    follow: Follower, model: str, version: str, api_url: str, api_key: str
) -> dict[str, Any]:
    """Wait until the serving instance answers with the champion, then ask it for one prediction."""

    def serving_champion() -> dict[str, Any] | None:
        found = _get_json(f"{api_url}/models/{model}", api_key)
        return found[0] if found and str(found[0].get("version")) == version else None

    wait_for(serving_champion, time.monotonic() + 120, f"the serving API answering with version {version}")
    follow.say(f"serving instance at {api_url} loaded version {version} (ONNX bundle from S3)")
    with (SAMPLES / "samples" / f"{model}.csv").open() as sample:
        header = sample.readline().strip().split(",")
        values = sample.readline().strip().split(",")
    target = _contract_target(model)
    record = {
        name: _number_or_text(value) for name, value in zip(header, values, strict=True) if name != target
    }
    answer = wait_for(
        lambda: _get_json(f"{api_url}/models/{model}/predict", api_key, record),
        time.monotonic() + 30,
        "a prediction",
    )
    follow.say(f"prediction from version {answer[1].get('x-model-version')}: {answer[0].get('prediction')!r}")
    return record


def _contract_target(model: str) -> str:
    from common.contracts import parse_contract

    return parse_contract((SAMPLES / f"{model}.yaml").read_bytes()).target


def _number_or_text(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


# The story: a first, small and noisy month trains version 1; a later, larger month trains a version
# that beats it on the same holdout, and serving switches to it. (`contracts/samples/`: the first is
# 50 rows of iris with measurement noise (f1 0.86 on its own holdout, 0.79 on the second's); the
# second adds 150 clean rows (1.0).)
MONTHS = (("2026-10", "iris-2026-10.csv"), ("2026-11", "iris.csv"))


def run_demo(stack_name: str, console: Console, api_url: str | None, model: str = "iris") -> None:
    from cli.target import api_key_for_stack
    from common.adapters import tracking

    follow = Follower(stack_name, timed_printer(console))
    api_key = api_key_for_stack(stack_name) if api_url is not None else ""
    location = put_contract(SAMPLES / f"{model}.yaml", stack_name)
    follow.say(f"contract for model '{model}' in {location}")
    served: str | None = None
    record: dict[str, Any] = {}
    for month, sample_name in MONTHS:
        console.print(f"\n[bold]The data of {month} lands in the raw bucket[/bold]")
        result = _upload_month(follow, stack_name, model, month, sample_name)
        champion = tracking.champion(model)
        if champion is None:
            raise RuntimeError(f"model {model!r} has no champion: see `arrival status` and the MLflow UI")
        if result.outcome == "promoted" and served is not None:
            follow.say(f"[bold]the champion moved from version {served} to {champion.version}[/bold]")
        elif result.outcome == "rejected":
            follow.say(f"the champion stays version {champion.version}")
        _print_champion(console, model, champion.version, tracking.run_metrics(champion.run_id))
        if api_url is None:
            console.print("no serving API known (set ARRIVAL_API_URL): skipping the served prediction")
            continue
        record = _serve_prediction(follow, model, champion.version, api_url, api_key)
        served = champion.version
    _print_next_steps(console, model, api_url, api_key, record)


def _upload_month(
    follow: Follower, stack_name: str, model: str, month: str, sample_name: str
) -> FollowResult:
    # A name of its own each run, so a second demo on a running stack is another upload (of the
    # same bytes: ingest recognises them, and nothing trains again).
    with tempfile.TemporaryDirectory(prefix="arrival-demo-") as scratch:
        sample = Path(scratch) / f"{model}-{month}-{int(time.time())}.csv"
        sample.write_bytes((SAMPLES / "samples" / sample_name).read_bytes())
        uploaded = upload(sample, model, stack_name)
    follow.say(f"uploaded s3://{uploaded.bucket}/{uploaded.key} (version {uploaded.version_id})")
    result = follow_upload(follow, uploaded, DEMO_TIMEOUT_SECONDS)
    _say_how_ingest_ended(follow, result)
    return result


def _print_champion(console: Console, model: str, version: str, metrics: dict[str, float]) -> None:
    console.print_json(
        data={
            "model": model,
            "champion": version,
            "metrics": {
                name: value
                for name, value in metrics.items()
                if not name.startswith(("timing.", "data.", "train.", "worker."))
            },
            "mlflow_ui": f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/models/{model}",
        }
    )


def _print_next_steps(
    console: Console, model: str, api_url: str | None, api_key: str, record: dict[str, Any]
) -> None:
    mlflow_url = os.environ.get("MLFLOW_TRACKING_URI", "")
    console.print("\n[bold]Look around[/bold]")
    if api_url is not None:
        # Every route but the probes needs the key, the docs too: a browser sends no x-api-key.
        console.print(
            f"  API schema: curl -s {api_url}/openapi.json -H 'x-api-key: {api_key}'", highlight=False
        )
    console.print(f"  MLflow UI:  {mlflow_url}/#/models/{model}", highlight=False)
    if username := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        # The UI asks for the login too; the password is not printed (a terminal's scrollback is kept).
        console.print(
            f"  MLflow login: {username}; its password is MLFLOW_TRACKING_PASSWORD, or the local "
            "cloud's mlflow/login.json (docs/local-cloud.md)",
            soft_wrap=True,
            highlight=False,
        )
    if api_url is not None and record:
        console.print(
            # The key itself, so that the line works pasted as it is: the operator's own key, which
            # the command has just read with their credentials.
            f"  curl -s -X POST {api_url}/models/{model}/predict -H 'Content-Type: application/json' "
            f"-H 'x-api-key: {api_key}' -d '{json.dumps(record)}'",
            soft_wrap=True,
            highlight=False,
        )
    console.print("\n[bold]Next commands[/bold]")
    for command, what in (
        ("uv run arrival status", "every model: data, jobs, versions, what serving answers with"),
        ("uv run arrival logs trainer", "what the trainer did (ingest, reconcile, serving too)"),
        (f"uv run arrival upload my.csv --model {model} --wait", "your own file, followed to the gate"),
        (f"uv run arrival contract check my.csv --contract {model}", "would ingest accept it?"),
        (f"uv run arrival rollback --model {model}", "serve the previous champion again"),
    ):
        console.print(f"  {command:<52} {what}", highlight=False)


def _say_how_ingest_ended(follow: Follower, result: FollowResult) -> None:
    if result.outcome == "duplicate":
        follow.say(
            f"the same bytes were accepted before as {result.duplicate_of}: "
            "ingest drops the copy, so nothing new to train"
        )
    elif result.outcome == "quarantined":
        raise RuntimeError(f"the sample was quarantined ({result.detail}): see {result.report_uri}")
