"""Where the CLI writes: long values whole, whatever the output is.

rich wraps at 80 columns when the output is not a terminal (a pipe, a file, CI's log), which split
S3 keys and queue URLs across lines and squeezed `status`'s tables. Off a terminal, the consoles
are as wide as COLUMNS says, or else wide enough for any line: a value is never split, and a table
is as wide as its content. On a terminal, rich's own width: tables fold within it.
"""

from __future__ import annotations

import os

from rich.console import Console

# Off a terminal without COLUMNS: wider than any line the CLI prints.
UNBOUNDED_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    if Console(stderr=stderr).is_terminal:
        return Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    return Console(stderr=stderr, width=int(columns) if columns.isdigit() else UNBOUNDED_WIDTH)
