"""Options more than one command takes, spelled once."""

from __future__ import annotations

from typing import Annotated

import typer

StackName = Annotated[str, typer.Option("--stack-name", help="the deployed stack")]
