"""Data in, predictions out: upload (and follow), batch, predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cli.options import StackName
from cli.output import Outcome, console, errors, fail, print_quarantine
from cli.target import needs_a_cloud, point_at_cloud
from localcloud import control
from localcloud.settings import get_local_cloud_settings

if TYPE_CHECKING:
    from cli.batch import PartOutcome

app = typer.Typer()


@app.command()
@needs_a_cloud
def upload(
    file: Annotated[Path, typer.Argument(help="the data file (.csv, .csv.gz or .parquet)")],
    model: Annotated[str, typer.Option(help="the model it trains: the key's first segment")],
    wait: Annotated[
        bool,
        typer.Option(
            help="follow it to the gate: 0 promoted, 3 rejected, 4 quarantined, 5 awaiting approval, "
            "1 otherwise"
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits for the gate's decision")] = 600,
    stack_name: StackName = "arrival",
) -> None:
    """Upload a data file to the raw bucket under <model>/, and (--wait) follow it through the chain."""
    from cli import follow as following
    from cli import operations
    from cli.demo import timed_printer

    try:
        uploaded = following.upload(file, model, stack_name)
        follow = following.Follower(stack_name, timed_printer(console)) if wait else None
    except operations.OperationError as error:
        raise fail(error) from error
    console.print(
        f"uploaded s3://{uploaded.bucket}/{uploaded.key} (version {uploaded.version_id})",
        highlight=False,
        soft_wrap=True,  # one line, for whoever copies or parses it
    )
    if follow is None:
        return
    try:
        result = following.follow_upload(follow, uploaded, timeout)
    except following.TrainingFailedError as error:
        raise fail(
            RuntimeError(
                f"training {model} on it failed and its job was dead-lettered: {error}; "
                "`arrival logs trainer` shows why, `arrival redrive training` retries once it is fixed"
            )
        ) from error
    except TimeoutError as error:
        raise fail(
            TimeoutError(
                f"{error} within {timeout:.0f} s; `arrival status` shows the chain, --timeout waits longer"
            )
        ) from error
    if result.outcome == "duplicate":
        raise fail(
            RuntimeError(
                f"the same bytes were already accepted as {result.duplicate_of}: ingest drops this copy, "
                "so nothing trains on it; upload new data"
            )
        )
    if result.outcome == "quarantined" and result.report is not None:
        print_quarantine(result.report, result.report_uri or "")
        raise typer.Exit(Outcome.quarantined)
    if result.outcome == "rejected":
        errors.print(
            f"[red]rejected:[/red] version {result.version} was not promoted (the champion stays): "
            f"{escape(result.detail)}",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(Outcome.rejected)
    if result.outcome == "awaiting_approval":
        errors.print(
            f"[yellow]awaiting approval:[/yellow] version {result.version} passed the gate "
            f"({escape(result.detail)}); the contract asks a person: "
            f"`arrival approve --model {model} --version {result.version}` promotes it",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(Outcome.awaiting_approval)
    console.print(f"[green]promoted: {model} version {result.version} is the champion[/green]")


@app.command()
@needs_a_cloud
def batch(
    file: Annotated[
        Path, typer.Argument(help="records to score (.csv, .csv.gz or .parquet), no target column")
    ],
    model: Annotated[str, typer.Option(help="the model whose champion scores them")],
    wait: Annotated[
        bool, typer.Option(help="wait for the predictions: exit 0 if every part was scored")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 1800,
    output: Annotated[
        Path | None,
        typer.Option(help="with --wait: also write the predictions to this local .csv or .parquet file"),
    ] = None,
    stack_name: StackName = "arrival",
) -> None:
    """Score a file with a model's champion: it goes under <model>/input/ in the inference bucket (a CSV
    too large for one invocation is split), and the predictions appear under <model>/output/."""
    from cli import batch as batches
    from cli.operations import OperationError

    try:
        if output is not None:
            if not wait:
                raise OperationError("--output needs --wait: the predictions are written once they exist")
            batches.check_output_path(output)
        submitted = batches.submit_batch(file, model, stack_name)
    except OperationError as error:
        raise fail(error) from error
    for part in submitted.parts:
        console.print(f"uploaded s3://{submitted.bucket}/{part.key}", highlight=False, soft_wrap=True)
    if not wait:
        console.print(
            f"predictions will appear under s3://{submitted.bucket}/{model}/output/", highlight=False
        )
        return
    try:
        outcomes = batches.wait_batch(submitted, timeout)
    except TimeoutError as error:
        raise fail(TimeoutError(f"{error}; `arrival logs` shows the batch function's progress")) from error
    _print_batch_outcomes(outcomes)
    if output is not None and any(outcome.ok for outcome in outcomes):
        written = batches.save_predictions(outcomes, output)
        scored_only = "" if all(outcome.ok for outcome in outcomes) else " (the scored parts only)"
        console.print(
            f"wrote {written} predictions to {output}{scored_only}", highlight=False, soft_wrap=True
        )
    if not all(outcome.ok for outcome in outcomes):
        raise typer.Exit(1)


def _print_batch_outcomes(outcomes: list[PartOutcome]) -> None:
    for outcome in outcomes:
        if outcome.manifest is not None:
            rows = outcome.manifest["rows"]
            console.print(
                f"scored {rows['scored']} rows with version {outcome.manifest['version']} "
                f"({rows['rejected']} rejected): {outcome.manifest['predictions']}"
                + (f", rejects: {outcome.manifest['rejects']}" if outcome.manifest.get("rejects") else ""),
                highlight=False,
                soft_wrap=True,
            )
        elif outcome.failure is not None:
            errors.print(
                f"[red]failed:[/red] {outcome.part.key}: {escape(str(outcome.failure.get('reason')))}",
                highlight=False,
                soft_wrap=True,
            )


def _api_key(ctx: typer.Context, stack_name: str) -> str:
    """The key to send: ARRIVAL_API_KEY, or else the stack's secret, from the cloud the command targets."""
    from cli.target import CliSettings, Target, api_key_for_stack

    # The secret is read from the chosen cloud: the local one needs its endpoint set first (AWS needs
    # nothing, and predicting needs no tracking server, which pointing at AWS would insist on).
    if CliSettings().api_key is None and Target(str(ctx.obj)) is Target.local:
        point_at_cloud(ctx.obj)
    return api_key_for_stack(stack_name)


@app.command()
def predict(
    file: Annotated[str, typer.Argument(help="a CSV or JSON file of records, or - for JSON on stdin")],
    model: Annotated[str, typer.Option(help="the model to ask")],
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="ARRIVAL_API_URL", help="the serving API; the local cloud's if unset")
    ] = None,
    stack_name: Annotated[str, typer.Option(help="the stack whose API key to send")] = "arrival",
) -> None:
    """Ask the serving API for predictions on the records of a file (or stdin)."""
    import sys

    from cli import operations, predict_client
    from cli.target import TargetError

    if file == "-":
        text, is_csv = sys.stdin.read(), False
    else:
        path = Path(file)
        if not path.is_file():
            errors.print(f"[red]error:[/red] no such file: {file}")
            raise typer.Exit(1)
        text, is_csv = path.read_text(), path.suffix.lower() == ".csv"
    api_url = url or control.status(get_local_cloud_settings())["endpoints"].get("api")
    if not api_url:
        errors.print("[red]error:[/red] no serving API known: start the local cloud, or pass --url")
        raise typer.Exit(1)
    try:
        api_key = _api_key(ctx, stack_name)
        answer = predict_client.predict(api_url, api_key, model, predict_client.read_records(text, is_csv))
    except (operations.OperationError, TargetError, ValueError) as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    typer.echo(json.dumps(answer, indent=2))
