"""Each function's package (its Makefile target's source list) holds every module of ours its handler
imports, however indirectly: a module moved or added without its line in the Makefile otherwise shows
only when the deployed function fails to import, minutes into an e2e run.

The imports come from grimp (import-linter's graph, imports inside functions included), the lists
from make itself (`make -pnq` prints each variable as make expands it), the handlers from template.yaml.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import grimp
import pytest

from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
OUR_PACKAGES = ("common", "serving", "handlers", "worker", "cli")
BUILD_TARGET = re.compile(r"^build-(\w+):\n\t\$\(call lambda_package,\$\((\w+)\),", re.MULTILINE)


def _functions() -> dict[str, str]:
    """Logical id -> handler module, for every function the Makefile builds."""
    resources = load_template(ROOT / "template.yaml")["Resources"]
    return {
        name: resource["Properties"]["Handler"].rsplit(".", 1)[0]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource.get("Metadata", {}).get("BuildMethod") == "makefile"
    }


def _source_lists() -> dict[str, list[str]]:
    """Logical id -> the paths its Makefile target packages."""
    makefile = (ROOT / "Makefile").read_text()
    database = subprocess.run(
        ["make", "-pnq", "-f", "Makefile"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    variables = dict(re.findall(r"^(\w+_SOURCES) := (.*)$", database, re.MULTILINE))
    return {function: variables[variable].split() for function, variable in BUILD_TARGET.findall(makefile)}


def _files_of(module: str) -> list[str]:
    """The files importing the module takes: its own, and the __init__.py of each package above it."""
    parts = module.split(".")
    packages = [f"{'/'.join(parts[:depth])}/__init__.py" for depth in range(1, len(parts))]
    own = f"{'/'.join(parts)}.py"
    return [*packages, own if (ROOT / own).is_file() else f"{'/'.join(parts)}/__init__.py"]


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*OUR_PACKAGES, exclude_type_checking_imports=True)


FUNCTIONS = _functions()


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_a_functions_package_holds_every_module_its_handler_imports(function: str) -> None:
    handler = FUNCTIONS[function]
    sources = _source_lists()[function]
    imported = {handler, *_graph().find_upstream_modules(handler)}

    needed = {path for module in imported for path in _files_of(module)}
    missing = sorted(
        path
        for path in needed
        if not any(path == source or path.startswith(f"{source}/") for source in sources)
    )

    assert missing == [], f"build-{function} packages {sources}, without {missing}"
