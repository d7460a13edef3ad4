"""`arrival contract`: put, delete, get, list, and check a file against a contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cli.options import StackName
from cli.output import Outcome, console, errors, fail, print_quarantine
from cli.target import needs_a_cloud, point_at_cloud

if TYPE_CHECKING:
    import pandas as pd

    from common.contracts import DataContract

app = typer.Typer(no_args_is_help=True, help="Data contracts: what each model accepts.")


@app.command("put")
@needs_a_cloud
def contract_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the contract, <model>.yaml")],
    stack_name: StackName = "arrival",
) -> None:
    """Validate a contract and upload it to the stack's config bucket: the model is live, no redeploy.
    A recipe the contract names (training.recipe) is checked here, then uploaded with it; a changed
    recipe queues a training on the model's data."""
    from cli import contracts, operations

    try:
        put = contracts.put_contract(file, stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    console.print(f"contract uploaded to {put.location}", highlight=False, soft_wrap=True)
    if put.recipe_location:
        console.print(f"recipe uploaded to {put.recipe_location}", highlight=False, soft_wrap=True)
    if put.queued_training:
        console.print("the recipe changed: a training on the model's data is queued", highlight=False)


@app.command("delete")
@needs_a_cloud
def contract_delete(
    model: Annotated[str, typer.Argument(help="the model whose contract to remove")],
    stack_name: StackName = "arrival",
) -> None:
    """Remove a model's contract (and its recipe). Files then arriving under <model>/ are quarantined
    until a contract is put again; the model's versions and its champion stay, and keep serving."""
    from cli import contracts, operations

    try:
        deleted = contracts.delete_contract(model, stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
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


@app.command("get")
@needs_a_cloud
def contract_get(
    model: Annotated[str, typer.Argument(help="the model whose contract to print")],
    stack_name: StackName = "arrival",
) -> None:
    """Print the contract the stack holds for a model (YAML, as uploaded)."""
    from cli import contracts, operations

    try:
        text = contracts.contract_text(model, stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    typer.echo(text, nl=not text.endswith("\n"))


@app.command("list")
@needs_a_cloud
def contract_list(
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list")] = False,
    stack_name: StackName = "arrival",
) -> None:
    """The models with a contract in the stack, one per line."""
    from cli import contracts, operations

    try:
        models = contracts.contract_models(stack_name)
    except operations.OperationError as error:
        raise fail(error) from error
    typer.echo(json.dumps(models) if as_json else "\n".join(models), nl=as_json or bool(models))


@app.command("check")
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
        raise fail(error) from error
    if report is None:
        console.print(f"{file}: would be accepted for model {parsed.model}", highlight=False)
        if rows:
            _check_recipe(rows[0], parsed, contract, stack_name)
        return
    print_quarantine(report, "(below; nothing was uploaded)")
    typer.echo(json.dumps(report, indent=2))
    raise typer.Exit(Outcome.quarantined)


def _check_recipe(rows: pd.DataFrame, contract: DataContract, contract_source: str, stack_name: str) -> None:
    """What the trainer would decide about the recipe's servability, fitted on this file here."""
    from cli import contracts, operations

    try:
        trial = contracts.try_recipe(rows, contract, contract_source, stack_name)
    except operations.OperationError as error:
        raise fail(error, Outcome.rejected) from error
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
        raise typer.Exit(Outcome.rejected)
    console.print("servable: its ONNX export gives the pipeline's answers", highlight=False)
