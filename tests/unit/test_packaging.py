"""The wheel a trainer is installed from carries what the worker needs besides code."""

from __future__ import annotations

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
