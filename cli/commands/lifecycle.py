"""A model's versions after training: reproduce, rollback, approve, reject, drift, and redrive."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cli.options import StackName
from cli.output import console, errors, fail
from cli.target import needs_a_cloud

if TYPE_CHECKING:
    pass

app = typer.Typer()


@app.command()
@needs_a_cloud
def reproduce(
    version: Annotated[str, typer.Argument(help="a version number, or an alias such as 'champion'")],
    model: Annotated[str, typer.Option(help="the registered model")] = "iris",
    stack_name: StackName = "arrival",
) -> None:
    """Rebuild a model version from what its run logged (dvc pull, the pipeline) and check its metrics."""
    from cli import operations

    try:
        result = operations.reproduce(model, version, stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    for name, logged in sorted(result.logged.items()):
        console.print(f"  {name}: logged {logged!r}, reproduced {result.reproduced.get(name)!r}")
    if not result.matches:
        errors.print(
            f"[red]{model} version {result.version}: metrics differ by more than {result.tolerance}[/red]"
        )
        raise typer.Exit(1)
    console.print(
        f"[green]{model} version {result.version} reproduced: every metric matches"
        f" to {result.tolerance}[/green]"
    )


@app.command()
@needs_a_cloud
def rollback(
    model: Annotated[str, typer.Option(help="the registered model")],
    to: Annotated[
        str | None, typer.Option(help="the version to serve; the previous champion if unset")
    ] = None,
    stack_name: StackName = "arrival",
) -> None:
    """Serve an earlier version: the serving pointer, then the champion alias, then ModelRolledBack;
    serving follows within its reload time. Run again, it changes nothing; a run cut short, it
    finishes. Without --to: the newest earlier version promoted and never rolled back away from."""
    from cli import approval, operations

    try:
        done = operations.rollback(model, to, approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    console.print(escape(done.message), highlight=False, soft_wrap=True)


@app.command()
@needs_a_cloud
def redrive(
    stage: Annotated[
        str,
        typer.Argument(
            help="ingest (files), training (jobs), batch (files to score) or notify (events not sent)"
        ),
    ],
    stack_name: StackName = "arrival",
) -> None:
    """Move a stage's dead-lettered messages back to its queue, once their cause is fixed."""
    from cli import operations, redrive

    try:
        moved = redrive.redrive(stage, stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    if stage == "notify":
        console.print(f"sent {moved} notification(s) again from the notify dead-letter queue")
    else:
        console.print(f"moved {moved} message(s) from the {stage} dead-letter queue back to its queue")


@app.command()
@needs_a_cloud
def approve(
    model: Annotated[str, typer.Option(help="the registered model")],
    version: Annotated[str, typer.Option(help="the version awaiting approval")],
    by: Annotated[
        str | None, typer.Option(help="who approves, recorded on the version; $USER if unset")
    ] = None,
    stack_name: StackName = "arrival",
) -> None:
    """Promote a version waiting for approval: champion alias, serving pointer, ModelPromoted."""
    from cli import approval, operations

    try:
        done = approval.approve(model, version, by or approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    console.print(escape(done.message), highlight=False, soft_wrap=True)


@app.command()
@needs_a_cloud
def reject(
    model: Annotated[str, typer.Option(help="the registered model")],
    version: Annotated[str, typer.Option(help="the version awaiting approval")],
    reason: Annotated[str, typer.Option(help="why, recorded on the version and in ModelRejected")],
    by: Annotated[
        str | None, typer.Option(help="who rejects, recorded on the version; $USER if unset")
    ] = None,
    stack_name: StackName = "arrival",
) -> None:
    """Reject a version waiting for approval; the champion stays."""
    from cli import approval, operations

    try:
        done = approval.reject(model, version, reason, by or approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    console.print(escape(done.message), highlight=False, soft_wrap=True)


@app.command()
@needs_a_cloud
def drift(
    model: Annotated[str, typer.Option(help="the registered model")],
    versions: Annotated[int, typer.Option(min=1, help="how many of the newest versions to show")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable: the same as the screen")] = False,
    now: Annotated[
        bool, typer.Option("--now", help="run the live-traffic report now, as its schedule does, first")
    ] = False,
    stack_name: StackName = "arrival",
) -> None:
    """The drift reports of a model: each version's data against its champion's, and live traffic."""
    from cli import drift as drift_view
    from cli import operations

    try:
        if now:
            ran = drift_view.report_now(model, stack_name)
            reason = f": {ran['reason']}" if ran.get("reason") else ""
            errors.print(
                f"live report run now: {escape(str(ran['status']))}{escape(reason)}", highlight=False
            )
        view = drift_view.overview(model, stack_name, versions)
    except operations.OperationError as error:
        raise fail(error) from error
    if as_json:
        typer.echo(json.dumps(view.as_dict(), indent=2))
        return
    for line in drift_view.render(view):
        console.print(escape(line), highlight=False, soft_wrap=True)
