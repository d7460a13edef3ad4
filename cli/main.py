"""The ``arrival`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.commands import cloud, contract, data, lifecycle

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
for commands in (cloud.app, data.app, lifecycle.app):
    app.add_typer(commands)
app.add_typer(contract.app, name="contract")


@app.callback()
def choose_target(
    ctx: typer.Context,
    aws: Annotated[
        bool, typer.Option("--aws", help="talk to your AWS account (default: the local cloud, while it runs)")
    ] = False,
) -> None:
    """Drop a dataset into an S3 bucket, and a better model arrives in service by itself."""
    from cli.target import CliSettings, Target, choose

    ctx.obj = Target.aws if aws else CliSettings().target
    choose(ctx.obj)


if __name__ == "__main__":
    app()
