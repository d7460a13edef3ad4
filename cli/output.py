"""Where the CLI writes: long values whole, whatever the output is.

rich wraps at 80 columns when the output is not a terminal (a pipe, a file, CI's log), which split
S3 keys and queue URLs across lines and squeezed `status`'s tables. Off a terminal, the consoles
are as wide as COLUMNS says, or else wide enough for any line: a value is never split, and a table
is as wide as its content. On a terminal, rich's own width: tables fold within it.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

# Off a terminal without COLUMNS: wider than any line the CLI prints.
UNBOUNDED_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    if Console(stderr=stderr).is_terminal:
        return Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    return Console(stderr=stderr, width=int(columns) if columns.isdigit() else UNBOUNDED_WIDTH)


# Built once, at the CLI's import: whether the output is a terminal does not change during a command.
console = make_console()
errors = make_console(stderr=True)


class Outcome(IntEnum):
    """The exit codes, for scripts (the README's table): what became of what was asked."""

    ok = 0  # promoted, accepted (`contract check`), done
    error = 1  # anything else: a timeout, a duplicate, a dead-lettered job, a missing file or stack
    rejected = 3  # by the gate, or not servable (`contract check` with a recipe)
    quarantined = 4  # the file breaks its contract
    awaiting_approval = 5  # a person must approve (`training.approval: manual`)


def say(message: str) -> None:
    """A step of a longer command, dimmed."""
    console.print(f"[dim]{message}[/dim]")


def fail(error: Exception, code: Outcome = Outcome.error) -> typer.Exit:
    """Print the one-line reason (markup in it escaped: it may quote a user's file) and return the
    exit to raise."""
    errors.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def print_quarantine(report: dict[str, Any], where: str) -> None:
    # Details and examples are the file's own text: never rich markup.
    errors.print(f"[red]quarantined:[/red] rule {report['rule']}", highlight=False)
    for violation in report["violations"][:3]:
        errors.print(f"  {violation['rule']}: {escape(violation['detail'])}", soft_wrap=True, highlight=False)
        if violation.get("examples"):
            examples = ", ".join(violation["examples"])
            errors.print(f"    e.g. {escape(examples)}", soft_wrap=True, highlight=False)
    errors.print(f"  report: {escape(where)}", soft_wrap=True, highlight=False)
