"""The ``arrival`` command line."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.markup import escape

from cli.output import make_console
from localcloud import control
from localcloud.settings import get_local_cloud_settings

if TYPE_CHECKING:
    import pandas as pd

    from cli.batch import PartOutcome
    from common.contracts import DataContract

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = make_console()
errors = make_console(stderr=True)


def _say(message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


P = ParamSpec("P")
R = TypeVar("R")
# The cloud this invocation targets, set by the app's callback (--aws, ARRIVAL_TARGET) before any
# command runs; read by `needs_a_cloud`, which has no context of its own to read it from.
_chosen_target: ContextVar[object] = ContextVar("chosen_target")


def needs_a_cloud(command: Callable[P, R]) -> Callable[P, R]:
    """Marks a command that talks to a cloud: it points at the chosen one (cli/target.py) once its
    arguments are parsed, so `--help` and a usage error never need a cloud running."""

    @functools.wraps(command)
    def pointed(*args: P.args, **kwargs: P.kwargs) -> R:
        point_at_cloud(_chosen_target.get())
        return command(*args, **kwargs)

    return pointed


@app.callback()
def choose_target(
    ctx: typer.Context,
    aws: Annotated[
        bool, typer.Option("--aws", help="talk to your AWS account (default: the local cloud, while it runs)")
    ] = False,
) -> None:
    """Drop a dataset into an S3 bucket, and a better model arrives in service by itself."""
    from cli.target import CliSettings, Target

    ctx.obj = Target.aws if aws else CliSettings().target
    _chosen_target.set(ctx.obj)


def point_at_cloud(target: object) -> None:
    """Set the environment for the chosen cloud, or exit with one line saying what to do."""
    from cli.target import Target, TargetError, environment_for

    settings = get_local_cloud_settings()
    running = bool(target == Target.local and control.status(settings)["running"])
    try:
        os.environ.update(
            environment_for(Target(str(target)), settings, cloud_running=running, environ=dict(os.environ))
        )
    except TargetError as error:
        errors.print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(1) from error


@app.command()
def up() -> None:
    """Start the local cloud in the background: LocalStack, the MLflow tracking server, the Lambda
    executor and the EC2 instance agent."""
    from localcloud.interpreters import InterpreterNotFoundError

    settings = get_local_cloud_settings()
    try:
        result = control.up(settings, say=_say)
    except (control.LocalCloudError, InterpreterNotFoundError) as error:
        raise _fail(error) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
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

    parameters = deployment.publish_release_for_sam(say=_say)
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
    outputs = deployment.deploy_stack(template, stack_name, overrides, say=_say, vendor_dependencies=vendor)
    for key, value in sorted(outputs.items()):
        console.print(f"  {key}: {value}")


contract_app = typer.Typer(no_args_is_help=True, help="Data contracts: what each model accepts.")
app.add_typer(contract_app, name="contract")


@contract_app.command("put")
@needs_a_cloud
def contract_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the contract, <model>.yaml")],
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Validate a contract and upload it to the stack's config bucket: the model is live, no redeploy.
    A recipe the contract names (training.recipe) is checked here, then uploaded with it; a changed
    recipe queues a training on the model's data."""
    from cli import contracts, operations

    try:
        put = contracts.put_contract(file, stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
    console.print(f"contract uploaded to {put.location}", highlight=False, soft_wrap=True)
    if put.recipe_location:
        console.print(f"recipe uploaded to {put.recipe_location}", highlight=False, soft_wrap=True)
    if put.queued_training:
        console.print("the recipe changed: a training on the model's data is queued", highlight=False)


def _fail(error: Exception, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


@contract_app.command("delete")
@needs_a_cloud
def contract_delete(
    model: Annotated[str, typer.Argument(help="the model whose contract to remove")],
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Remove a model's contract (and its recipe). Files then arriving under <model>/ are quarantined
    until a contract is put again; the model's versions and its champion stay, and keep serving."""
    from cli import contracts, operations

    try:
        deleted = contracts.delete_contract(model, stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
    if deleted.contract is None and deleted.recipe is None:
        console.print(
            f"model {model} has no contract in stack {stack_name}: nothing to delete", highlight=False
        )
        return
    for removed in (deleted.contract, deleted.recipe):
        if removed is not None:
            console.print(f"deleted {removed}", highlight=False, soft_wrap=True)
    console.print(
        f"files arriving under {model}/ are now quarantined (no_contract); its champion keeps serving",
        highlight=False,
    )


@contract_app.command("get")
@needs_a_cloud
def contract_get(
    model: Annotated[str, typer.Argument(help="the model whose contract to print")],
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Print the contract the stack holds for a model (YAML, as uploaded)."""
    from cli import contracts, operations

    try:
        text = contracts.contract_text(model, stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
    typer.echo(text, nl=not text.endswith("\n"))


@contract_app.command("list")
@needs_a_cloud
def contract_list(
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list")] = False,
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """The models with a contract in the stack, one per line."""
    from cli import contracts, operations

    try:
        models = contracts.contract_models(stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
    typer.echo(json.dumps(models) if as_json else "\n".join(models), nl=as_json or bool(models))


# Exit codes of `contract check` and `upload --wait`, for scripts: 1 stays "could not tell".
EXIT_REJECTED = 3
EXIT_QUARANTINED = 4
EXIT_AWAITING_APPROVAL = 5


def _print_quarantine(report: dict[str, Any], where: str) -> None:
    # Details and examples are the file's own text: never rich markup.
    errors.print(f"[red]quarantined:[/red] rule {report['rule']}", highlight=False)
    for violation in report["violations"][:3]:
        errors.print(f"  {violation['rule']}: {escape(violation['detail'])}", soft_wrap=True, highlight=False)
        if violation.get("examples"):
            examples = ", ".join(violation["examples"])
            errors.print(f"    e.g. {escape(examples)}", soft_wrap=True, highlight=False)
    errors.print(f"  report: {escape(where)}", soft_wrap=True, highlight=False)


@contract_app.command("check")
def contract_check(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the data file (.csv, .csv.gz or .parquet)")],
    contract: Annotated[
        str, typer.Option(help="a contract file (checked without any AWS call), or a model of the stack")
    ],
    stack_name: Annotated[str, typer.Option(help="the deployed stack (for a model's name)")] = "arrival",
) -> None:
    """Would ingest accept this file? Exit 0 if so; 4 with the quarantine's report if not. The
    contract's recipe, if it names one, is then fitted on the file and its ONNX export checked: 3 if
    it would not serve."""
    from cli import contracts, operations

    if not Path(contract).is_file():  # a model of the stack: its contract is in the cloud
        point_at_cloud(ctx.obj)
    import pandas as pd

    rows: list[pd.DataFrame] = []
    try:
        parsed = contracts.contract_for_check(contract, stack_name)
        # The contract's recipe is fitted on the file too, as ingest would store its rows.
        with_recipe = parsed.training.recipe is not None
        keep = (lambda processed: rows.append(pd.read_parquet(processed))) if with_recipe else None
        report = contracts.check_file(file, parsed, on_accepted=keep)
    except operations.OperationError as error:
        raise _fail(error) from error
    if report is None:
        console.print(f"{file}: would be accepted for model {parsed.model}", highlight=False)
        if rows:
            _check_recipe(rows[0], parsed, contract, stack_name)
        return
    _print_quarantine(report, "(below; nothing was uploaded)")
    typer.echo(json.dumps(report, indent=2))
    raise typer.Exit(EXIT_QUARANTINED)


def _check_recipe(rows: pd.DataFrame, contract: DataContract, contract_source: str, stack_name: str) -> None:
    """What the trainer would decide about the recipe's servability, fitted on this file here."""
    from cli import contracts, operations

    try:
        trial = contracts.try_recipe(rows, contract, contract_source, stack_name)
    except operations.OperationError as error:
        raise _fail(error, EXIT_REJECTED) from error
    scores = ", ".join(f"{name} {value:.4g}" for name, value in trial.metrics.items()) or "no holdout"
    console.print(
        f"the recipe {contract.training.recipe} fitted on {trial.train_rows} rows; on "
        f"{trial.holdout_rows} held out: {scores}",
        highlight=False,
        soft_wrap=True,
    )
    if trial.not_servable is not None:
        errors.print(
            f"[red]not servable:[/red] {escape(trial.not_servable)}", soft_wrap=True, highlight=False
        )
        raise typer.Exit(EXIT_REJECTED)
    console.print("servable: its ONNX export gives the pipeline's answers", highlight=False)


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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Upload a data file to the raw bucket under <model>/, and (--wait) follow it through the chain."""
    from cli import follow as following
    from cli import operations
    from cli.demo import timed_printer

    try:
        uploaded = following.upload(file, model, stack_name)
        follow = following.Follower(stack_name, timed_printer(console)) if wait else None
    except operations.OperationError as error:
        raise _fail(error) from error
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
        raise _fail(
            RuntimeError(
                f"training {model} on it failed and its job was dead-lettered: {error}; "
                "`arrival logs trainer` shows why, `arrival redrive training` retries once it is fixed"
            )
        ) from error
    except TimeoutError as error:
        raise _fail(
            TimeoutError(
                f"{error} within {timeout:.0f} s; `arrival status` shows the chain, --timeout waits longer"
            )
        ) from error
    if result.outcome == "duplicate":
        raise _fail(
            RuntimeError(
                f"the same bytes were already accepted as {result.duplicate_of}: ingest drops this copy, "
                "so nothing trains on it; upload new data"
            )
        )
    if result.outcome == "quarantined" and result.report is not None:
        _print_quarantine(result.report, result.report_uri or "")
        raise typer.Exit(EXIT_QUARANTINED)
    if result.outcome == "rejected":
        errors.print(
            f"[red]rejected:[/red] version {result.version} was not promoted (the champion stays): "
            f"{escape(result.detail)}",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(EXIT_REJECTED)
    if result.outcome == "awaiting_approval":
        errors.print(
            f"[yellow]awaiting approval:[/yellow] version {result.version} passed the gate "
            f"({escape(result.detail)}); the contract asks a person: "
            f"`arrival approve --model {model} --version {result.version}` promotes it",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(EXIT_AWAITING_APPROVAL)
    console.print(f"[green]promoted: {model} version {result.version} is the champion[/green]")


@app.command()
@needs_a_cloud
def reproduce(
    version: Annotated[str, typer.Argument(help="a version number, or an alias such as 'champion'")],
    model: Annotated[str, typer.Option(help="the registered model")] = "iris",
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Rebuild a model version from what its run logged (dvc pull, the pipeline) and check its metrics."""
    from cli import operations

    try:
        result = operations.reproduce(model, version, stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Serve an earlier version: the serving pointer, then the champion alias, then ModelRolledBack;
    serving follows within its reload time. Run again, it changes nothing; a run cut short, it
    finishes. Without --to: the newest earlier version promoted and never rolled back away from."""
    from cli import approval, operations

    try:
        done = operations.rollback(model, to, approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Move a stage's dead-lettered messages back to its queue, once their cause is fixed."""
    from cli import operations, redrive

    try:
        moved = redrive.redrive(stage, stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
    if stage == "notify":
        console.print(f"sent {moved} notification(s) again from the notify dead-letter queue")
    else:
        console.print(f"moved {moved} message(s) from the {stage} dead-letter queue back to its queue")


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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
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
        raise _fail(error) from error
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
        raise _fail(TimeoutError(f"{error}; `arrival logs` shows the batch function's progress")) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """The functions' logs (CloudWatch Logs) and the trainer's and server's output, in time order."""
    from datetime import UTC, datetime

    from cli import logs as log_reading
    from cli.operations import OperationError

    try:
        groups = log_reading.log_groups(source, stack_name)
        start_ms = log_reading.since_ms(since)
    except OperationError as error:
        raise _fail(error) from error
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


@app.command()
@needs_a_cloud
def demo(stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival") -> None:
    """Drop a sample file into the raw bucket and follow it through the chain."""
    from cli.demo import run_demo

    local_api = control.status(get_local_cloud_settings())["endpoints"].get("api")
    run_demo(stack_name, console, os.environ.get("ARRIVAL_API_URL") or local_api)


@app.command()
@needs_a_cloud
def approve(
    model: Annotated[str, typer.Option(help="the registered model")],
    version: Annotated[str, typer.Option(help="the version awaiting approval")],
    by: Annotated[
        str | None, typer.Option(help="who approves, recorded on the version; $USER if unset")
    ] = None,
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Promote a version waiting for approval: champion alias, serving pointer, ModelPromoted."""
    from cli import approval, operations

    try:
        done = approval.approve(model, version, by or approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
) -> None:
    """Reject a version waiting for approval; the champion stays."""
    from cli import approval, operations

    try:
        done = approval.reject(model, version, reason, by or approval.current_user(), stack_name)
    except operations.OperationError as error:
        raise _fail(error) from error
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
    stack_name: Annotated[str, typer.Option(help="the deployed stack")] = "arrival",
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
        raise _fail(error) from error
    if as_json:
        typer.echo(json.dumps(view.as_dict(), indent=2))
        return
    for line in drift_view.render(view):
        console.print(escape(line), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
