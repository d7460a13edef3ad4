"""The local cloud and the stack: up, down, env, status, release, deploy, demo, logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cli.options import StackName
from cli.output import console, errors, fail, say
from cli.target import needs_a_cloud
from localcloud import control
from localcloud.settings import get_local_cloud_settings

if TYPE_CHECKING:
    pass

app = typer.Typer()


@app.command()
def up() -> None:
    """Start the local cloud in the background: LocalStack, the MLflow tracking server, the Lambda
    executor and the EC2 instance agent."""
    from localcloud.interpreters import InterpreterNotFoundError

    settings = get_local_cloud_settings()
    try:
        result = control.up(settings, say=say)
    except (control.LocalCloudError, InterpreterNotFoundError) as error:
        raise fail(error) from error
    if result.already_running:
        console.print(f"already running (supervisor pid {result.pid}); nothing to do")
    else:
        console.print(f"local cloud up (supervisor pid {result.pid})")
    for name, url in result.endpoints.items():
        console.print(f"  {name}: {url}")


@app.command()
def down() -> None:
    """Stop the local cloud and wait until every process and port is gone."""
    settings = get_local_cloud_settings()
    try:
        was_running = control.down(settings)
    except control.LocalCloudError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print("local cloud stopped" if was_running else "local cloud was not running")


@app.command()
@needs_a_cloud
def env(
    ctx: typer.Context,
    stack_name: StackName = "arrival",
) -> None:
    """Print `export` lines that point a shell at the target: eval "$(uv run arrival env)"."""
    from cli.target import Target, shell_environment

    settings = get_local_cloud_settings()
    found = shell_environment(
        Target(str(ctx.obj or "local")),
        settings,
        dict(os.environ),
        stack_name,
        control.status(settings)["endpoints"].get("api"),
    )
    typer.echo(found.export_lines(), nl=False)
    for what in found.missing:
        errors.print(f"# not set: {escape(what)}", soft_wrap=True, highlight=False)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable: the same as the screen")] = False,
    stack_name: StackName = "arrival",
) -> None:
    """The local cloud, then each model: data accepted and quarantined, jobs, versions, serving."""
    from cli.target import Target

    report = control.status(get_local_cloud_settings(), stack_name)
    # Which cloud the other commands talk to (cli/target.py): real AWS only when chosen.
    target = Target(str(ctx.obj or "local"))
    report["target"] = str(target)
    if report["running"] or target == Target.aws:
        from cli.status import stack_status_or_reason
        from cli.target import TargetError, environment_for

        try:
            os.environ.update(
                environment_for(
                    target,
                    get_local_cloud_settings(),
                    cloud_running=report["running"],
                    environ=dict(os.environ),
                )
            )
        except TargetError as error:  # status still shows the rest, and why the stack is not read
            report["stack"] = {"stack": stack_name, "error": str(error)}
            _show(report, as_json)
            return
        api_url = os.environ.get("ARRIVAL_API_URL") or (
            report["endpoints"].get("api") if target == Target.local else None
        )
        report["stack"] = stack_status_or_reason(stack_name, api_url)
    _show(report, as_json)


def _show(report: dict[str, Any], as_json: bool) -> None:
    from cli.status_view import print_cloud, print_stack

    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_cloud(console, report)
    if "stack" in report:
        print_stack(console, report["stack"])


@app.command()
@needs_a_cloud
def release() -> None:
    """Build the checkout's release (the wheel and its locks) and publish it for `sam deploy`.

    `arrival deploy` does this itself; with SAM, pass the line it prints to --parameter-overrides."""
    from localcloud import deploy as deployment  # boto3 and uv work only when publishing

    parameters = deployment.publish_release_for_sam(say=say)
    typer.echo(" ".join(f"{key}={value}" for key, value in parameters.items()))


@app.command()
@needs_a_cloud
def deploy(
    ctx: typer.Context,
    template: Annotated[Path, typer.Option(help="SAM template to deploy")] = Path("template.yaml"),
    stack_name: Annotated[str, typer.Option(help="CloudFormation stack name")] = "arrival",
    parameter: Annotated[list[str] | None, typer.Option(help="Key=Value template parameter")] = None,
) -> None:
    """Package the template's functions and create or update its stack, on the target cloud."""
    from cli.target import CliSettings, Target, tracking_access
    from localcloud import deploy as deployment  # boto3 and zip work only when deploying

    overrides = dict(item.split("=", 1) for item in parameter or [])
    # The trainer logs where the deployer's own MLflow client does, unless told otherwise.
    if tracking_uri := os.environ.get("MLFLOW_TRACKING_URI"):
        overrides.setdefault("MlflowTrackingUri", tracking_uri)
    # ...and as the deployer does: their login goes into the stack's secret, never into user data.
    if "MlflowLoginSecretArn" not in overrides:
        access = tracking_access(
            Target(str(ctx.obj)), get_local_cloud_settings(), dict(os.environ), stack_name=stack_name
        )
        if access.login is not None:
            secret = deployment.login_secret_name(stack_name)
            overrides["MlflowLoginSecretArn"] = deployment.put_login_secret(
                secret, access.login.username, access.login.password
            )
    vendor = CliSettings().vendor_lambda_deps
    outputs = deployment.deploy_stack(template, stack_name, overrides, say=say, vendor_dependencies=vendor)
    for key, value in sorted(outputs.items()):
        console.print(f"  {key}: {value}")


@app.command()
@needs_a_cloud
def logs(
    source: Annotated[
        str | None,
        typer.Argument(
            help="ingest, reconcile, serving, trainer, batch, notify, drift or sweep; all of them if left out"
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    since: Annotated[str, typer.Option(help="how far back: 30s, 10m, 2h, 1d")] = "1h",
    stack_name: StackName = "arrival",
) -> None:
    """The functions' logs (CloudWatch Logs) and the trainer's and server's output, in time order."""
    from datetime import UTC, datetime

    from cli import logs as log_reading
    from cli.operations import OperationError

    try:
        groups = log_reading.log_groups(source, stack_name)
        start_ms = log_reading.since_ms(since)
    except OperationError as error:
        raise fail(error) from error
    lines = log_reading.follow(groups, start_ms) if follow else iter(log_reading.read(groups, start_ms))
    printed = 0
    try:
        for item in lines:
            at = datetime.fromtimestamp(item.line.timestamp_ms / 1000, UTC).strftime("%H:%M:%S")
            typer.echo(f"{at} {item.source:<9} {item.line.stream[-19:]:<19} {item.line.message.rstrip()}")
            printed += 1
    except KeyboardInterrupt:
        return
    if not printed:
        errors.print(f"no log lines since {since} ago (--since goes further back)", highlight=False)


@app.command()
@needs_a_cloud
def demo(stack_name: StackName = "arrival") -> None:
    """Drop a sample file into the raw bucket and follow it through the chain."""
    from cli.demo import run_demo

    local_api = control.status(get_local_cloud_settings())["endpoints"].get("api")
    run_demo(stack_name, console, os.environ.get("ARRIVAL_API_URL") or local_api)
