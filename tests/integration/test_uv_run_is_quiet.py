"""`uv run` says nothing of its own once the environment is installed: `make install` compiles the
bytecode once, so no later run recompiles 19,000 files and says so on stderr."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.conftest import PROJECT_ROOT


def test_uv_run_prints_nothing_but_the_commands_output() -> None:
    uv = shutil.which("uv")
    assert uv is not None
    result = subprocess.run(
        [uv, "run", "--frozen", "python", "-c", "print('only this')"],
        cwd=PROJECT_ROOT,
        # The project's own settings, not a variable of whoever runs the tests
        env={name: value for name, value in os.environ.items() if name != "UV_COMPILE_BYTECODE"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout == "only this\n"
    assert "Bytecode compiled" not in result.stderr, result.stderr
