"""The layout's import rules hold for the whole tree:
- common/ imports no entry point (serving, worker, handlers, cli);
- serving imports neither scikit-learn, pandas nor mlflow;
- nothing imports cli/;
- in common/, only the adapters import boto3, botocore, mlflow or dvc;
- the adapters import none of the domain (handlers -> domain -> adapters).
Adding `import boto3` to common/layout.py, or `from cli import output` to serving/, fails this test.

The contracts live in pyproject.toml ([tool.importlinter]) and import-linter checks them, rather than
an AST walk of our own: it follows indirect imports (common -> x -> serving counts), imports inside
functions and `import a.b` forms, which a hand-written walk would have to get right by itself, and the
same check runs from the command line (`uv run lint-imports`). test_serving_isolation.py proves the
second rule at run time as well, in a fresh interpreter that serves a request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)

    exit_code = lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)

    report = capsys.readouterr().out
    assert exit_code == 0, report
    assert "5 kept, 0 broken" in report
