"""The wheel a trainer is installed from carries what the worker needs besides code."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = shutil.which("uv")
    assert uv, "the test command installs uv"
    output = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(output), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return zipfile.ZipFile(next(output.glob("*.whl")))


def test_the_wheel_carries_the_pipeline_definition(wheel: zipfile.ZipFile) -> None:
    for name in ("dvc.yaml", "params.yaml"):
        assert wheel.read(f"worker/pipeline/{name}") == (ROOT / name).read_bytes()


def test_the_wheel_has_the_stage_command_and_not_the_localstack_plugin(wheel: zipfile.ZipFile) -> None:
    entry_points = next(name for name in wheel.namelist() if name.endswith("entry_points.txt"))
    assert "arrival-train = worker.stage_command:main" in wheel.read(entry_points).decode()
    assert not [name for name in wheel.namelist() if name.startswith("localcloud/lambda_executor")]


# What each function runs: its handler modules. The package must hold every project module they
# import, directly or not, and no project module they do not.
FUNCTIONS = {
    "IngestFunction": ["handlers.handle_ingest"],
    "ReconcileFunction": ["handlers.handle_reconcile"],
    "ServingFunction": ["serving.lambda_handler"],
    "BatchFunction": ["handlers.handle_batch"],
    "NotifyFunction": ["handlers.handle_notify"],
    "SweepFunction": ["handlers.handle_sweep"],
}
PROJECT_PACKAGES = {"cli", "common", "handlers", "localcloud", "serving", "worker"}


def _module_file(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project_imports(source: Path) -> set[str]:
    """The project modules a file imports, with the packages that importing them imports too."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            # `from package import name`: name is a module if the source tree has one by that name.
            modules.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _module_file(ROOT, f"{node.module}.{alias.name}")
            )
    parts = [module.split(".") for module in modules if module.split(".")[0] in PROJECT_PACKAGES]
    return {".".join(part[:depth]) for part in parts for depth in range(1, len(part) + 1)}


def _reachable(package: Path, entries: list[str]) -> tuple[set[str], set[str]]:
    """The project modules the entries import, directly or not, and those missing from the package."""
    seen: set[str] = set()
    missing: set[str] = set()
    pending = [prefix for entry in entries for prefix in _project_imports_of_name(entry)]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(package, module)
        if path is None:
            missing.add(module)
        else:
            pending.extend(_project_imports(path))
    return seen, missing


def _project_imports_of_name(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


@pytest.fixture(scope="module", params=sorted(FUNCTIONS))
def function_package(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """A function's package as `sam build` and `arrival deploy` build it, without its dependencies."""
    name: str = request.param
    artifacts = tmp_path_factory.mktemp(name)
    subprocess.run(
        ["make", "--no-print-directory", f"build-{name}", f"ARTIFACTS_DIR={artifacts}"],
        cwd=ROOT,
        env={**os.environ, "ARRIVAL_VENDOR_LAMBDA_DEPS": "0"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return name, artifacts


def test_a_function_package_holds_every_project_module_its_handlers_import(
    function_package: tuple[str, Path],
) -> None:
    name, package = function_package

    _, missing = _reachable(package, FUNCTIONS[name])

    assert missing == set()


def test_a_function_package_holds_no_project_module_its_handlers_do_not_import(
    function_package: tuple[str, Path],
) -> None:
    name, package = function_package
    reachable, _ = _reachable(package, FUNCTIONS[name])
    shipped = {
        ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
    }

    # serving/ is shipped whole: it also holds the EC2 server's entry point.
    whole = "serving." if name == "ServingFunction" else None
    assert {module for module in shipped - reachable if not (whole and module.startswith(whole))} == set()
    assert not {"worker", "cli", "localcloud"} & {module.split(".")[0] for module in shipped}
    assert (package / "requirements.txt").is_file()
