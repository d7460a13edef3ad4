"""The function packages `sam build` makes for AWS: their dependencies vendored for the functions'
runtime (python3.12, manylinux x86_64), not this machine's Python, and within Lambda's size limit.
Downloads wheels from PyPI the first time; uv's cache makes later runs take seconds."""

from __future__ import annotations

import os
import re
import subprocess
from email import message_from_string
from pathlib import Path
from typing import Any

import pytest

from localcloud.deploy import load_template

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = (
    "IngestFunction",
    "ReconcileFunction",
    "ServingFunction",
    "NotifyFunction",
    "DriftFunction",
    "BatchFunction",
    "SweepFunction",
)
# Lambda's limit on a function's unzipped code and layers (262,144,000 bytes).
LAMBDA_LIMIT_MIB = 250
# The serving package's budget, 150 MB: onnxruntime (73 MiB) and numpy with its OpenBLAS (50 MiB) are
# most of it; the AWS SDK is the runtime's own (see the Makefile's RUNTIME_PROVIDED).
SERVING_BUDGET_MIB = 150e6 / 2**20
# The runtime is CPython 3.12 on Amazon Linux 2023 (glibc 2.34), x86_64; the Makefile asks uv for
# wheels no newer than manylinux_2_28. The legacy manylinux names stand for glibc 2.5, 2.12 and 2.17.
RUNTIME_PYTHON = (3, 12)
MAX_GLIBC = (2, 28)
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def _build(function: str, artifacts: Path) -> Path:
    subprocess.run(
        ["make", "--no-print-directory", f"build-{function}", f"ARTIFACTS_DIR={artifacts}"],
        cwd=ROOT,
        env={**os.environ, "ARRIVAL_VENDOR_LAMBDA_DEPS": "1"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return artifacts


def _unzipped_mib(package: Path) -> float:
    return sum(path.lstat().st_size for path in package.rglob("*") if path.is_file()) / 2**20


def _top_level(package: Path) -> set[str]:
    return {path.name for path in package.iterdir()}


def _layers(function: str) -> list[Any]:
    template = load_template(ROOT / "template.yaml")
    shared = template.get("Globals", {}).get("Function", {}).get("Layers", [])
    own = template["Resources"][function]["Properties"].get("Layers", [])
    return [*shared, *own]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: _build(name, tmp_path_factory.mktemp(name)) for name in FUNCTIONS}


@pytest.fixture(params=FUNCTIONS)
def package(request: pytest.FixtureRequest, packages: dict[str, Path]) -> tuple[str, Path]:
    name: str = request.param
    return name, packages[name]


@pytest.fixture
def serving_package(packages: dict[str, Path]) -> Path:
    return packages["ServingFunction"]


def _report(capsys: pytest.CaptureFixture[str], name: str, package: Path) -> float:
    size = _unzipped_mib(package)
    with capsys.disabled():
        print(f"\n{name} package, unzipped: {size:.1f} MiB ({size * 2**20 / 1e6:.1f} MB)")  # noqa: T201
    return size


def test_every_function_fits_lambda_with_its_layers(
    package: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    name, path = package

    size = _report(capsys, name, path)

    # Lambda counts a function's layers toward the same limit. No function has one (pyproject.toml's
    # `lambda` group says why not the AWS SDK for pandas layer); one added must be measured here.
    assert _layers(name) == []
    assert size <= LAMBDA_LIMIT_MIB


def _compatible(tag: str) -> bool:
    """Whether a wheel tag (python-abi-platform) runs on the functions' runtime."""
    python, abi, platform = tag.split("-")
    major, minor = RUNTIME_PYTHON
    if abi == "abi3":
        version = re.fullmatch(r"cp3(\d+)", python)
        python_ok = version is not None and int(version[1]) <= minor
    else:
        python_ok = (python, abi) in {(f"py{major}", "none"), (f"cp{major}{minor}", "none")} or (
            python == abi == f"cp{major}{minor}"
        )
    return python_ok and (platform == "any" or _manylinux_x86_64(platform))


def _manylinux_x86_64(platform: str) -> bool:
    legacy = re.fullmatch(r"(manylinux\d+)_x86_64", platform)
    if legacy:
        glibc = LEGACY_MANYLINUX.get(legacy[1])
        return glibc is not None and glibc <= MAX_GLIBC
    modern = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    return modern is not None and (int(modern[1]), int(modern[2])) <= MAX_GLIBC


def test_every_vendored_wheel_is_built_for_the_functions_runtime(package: tuple[str, Path]) -> None:
    _, path = package
    # WHEEL is in email header format, a Tag line per tag the wheel was built with.
    tags = {
        record.parent.name: message_from_string(record.read_text()).get_all("Tag", [])
        for record in path.glob("*.dist-info/WHEEL")
    }

    assert tags
    # A wheel may carry several tags (py2.py3, manylinux aliases): one that fits the runtime suffices.
    assert {name: found for name, found in tags.items() if not any(map(_compatible, found))} == {}
    # Bytecode compiled by this machine's Python would be dead weight on python3.12.
    assert not list(path.rglob("*.pyc"))


def test_the_tag_check_refuses_other_pythons_and_platforms() -> None:
    assert all(
        map(
            _compatible,
            [
                "py3-none-any",
                "cp312-cp312-manylinux_2_28_x86_64",
                "cp312-cp312-manylinux2014_x86_64",
                "cp310-abi3-manylinux_2_17_x86_64",
            ],
        )
    )
    assert not any(
        map(
            _compatible,
            [
                "cp311-cp311-manylinux_2_28_x86_64",
                "cp313-abi3-manylinux_2_17_x86_64",
                "cp312-cp312-manylinux_2_34_x86_64",
                "cp312-cp312-manylinux_2_28_aarch64",
                "cp312-cp312-musllinux_1_2_x86_64",
                "cp312-cp312-macosx_11_0_arm64",
                "py2-none-any",
            ],
        )
    )


def test_each_package_holds_its_own_libraries_only(package: tuple[str, Path]) -> None:
    name, path = package
    shipped = _top_level(path)
    needs, refuses = {
        "IngestFunction": ({"handlers", "common", "pandas", "fastparquet", "pandera"}, {"pyarrow"}),
        # The reconciler talks to EC2, S3, SQS and Lambda: no data library at all.
        "ReconcileFunction": (
            {"handlers", "common", "aws_lambda_powertools", "pydantic_settings"},
            {"pandas", "numpy", "fastparquet", "pandera", "yaml"},
        ),
        # The sweep lists S3 and sends to SQS: the reconciler's libraries, no data library.
        "SweepFunction": (
            {"handlers", "common", "aws_lambda_powertools", "pydantic_settings"},
            {"pandas", "numpy", "fastparquet", "pandera", "yaml"},
        ),
        "ServingFunction": ({"serving", "common", "onnxruntime", "numpy"}, {"pandas", "scipy", "handlers"}),
        # Batch predictions: ingest's readers and the ONNX bundle loader (common/bundle_loader.py),
        # not the serving app.
        "BatchFunction": (
            {"handlers", "common", "pandas", "fastparquet", "pandera", "onnxruntime"},
            {"serving", "pyarrow", "scipy", "fastapi", "mangum"},
        ),
        # The notifier formats text and publishes to SNS: the AWS SDK and powertools, nothing more.
        "NotifyFunction": (
            {"handlers", "common", "aws_lambda_powertools", "pydantic_settings"},
            {"pandas", "numpy", "fastparquet", "pandera", "yaml", "onnxruntime"},
        ),
        # The drift report's statistics and Parquet; no model runtime, no serving app.
        "DriftFunction": (
            {"handlers", "common", "pandas", "scipy", "fastparquet"},
            {"onnxruntime", "serving", "pyarrow", "pandera"},
        ),
    }[name]

    assert needs <= shipped
    assert not (refuses | {"worker", "cli", "localcloud", "sklearn", "mlflow", "boto3", "botocore"}) & shipped


def test_the_serving_package_fits_its_budget(serving_package: Path) -> None:
    assert _unzipped_mib(serving_package) <= SERVING_BUDGET_MIB


def test_the_serving_package_has_binaries_for_the_functions_runtime(serving_package: Path) -> None:
    extensions = [path.name for path in serving_package.rglob("*.so")]

    for module in ("onnxruntime/capi/onnxruntime_pybind11_state", "numpy/_core/_multiarray_umath"):
        assert (serving_package / f"{module}.cpython-312-x86_64-linux-gnu.so").is_file(), module
    assert [name for name in extensions if ".cpython-" in name and "-312-" not in name] == []
