"""`arrival deploy` packages each function as `sam build` does: its Makefile target, told whether to
vendor the dependencies. Vendoring is the default, the one that works on AWS; only the local cloud's
deploys turn it off."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localcloud.deploy import load_template, package

BUCKET = "arrival-artifacts-123456789012-us-east-1"
TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Resources:
  HelloFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Handler: hello.handler
      Runtime: python3.12
    Metadata:
      BuildMethod: makefile
"""
# Records what the build was told, with the project Makefile's default for a variable left unset.
MAKEFILE = """\
build-HelloFunction:
\t@mkdir -p "$(ARTIFACTS_DIR)"
\t@printf '%s' "$${ARRIVAL_VENDOR_LAMBDA_DEPS:-1}" > "$(ARTIFACTS_DIR)/vendored"
"""


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def template_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    # A setting left in the developer's shell must not decide what these tests see.
    monkeypatch.setenv("ARRIVAL_VENDOR_LAMBDA_DEPS", "unset by the test")
    return tmp_path / "template.yaml"


def _packaged(s3: Any, template_path: Path, **options: bool) -> tuple[str, str]:
    """The code location package() wrote into the template, and what its zip says of vendoring."""
    template = load_template(template_path)
    package(template_path, template, BUCKET, s3, lambda _: None, **options)
    location = template["Resources"]["HelloFunction"]["Properties"]["CodeUri"]
    key = location.removeprefix(f"s3://{BUCKET}/")
    archive = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    return location, archive.read("vendored").decode()


def test_functions_are_packaged_with_their_dependencies_unless_told_otherwise(
    s3: Any, template_path: Path
) -> None:
    _, by_default = _packaged(s3, template_path)
    _, for_the_local_cloud = _packaged(s3, template_path, vendor_dependencies=False)

    assert by_default == "1"
    assert for_the_local_cloud == "0"


def test_packaging_twice_uploads_the_unchanged_zip_once(s3: Any, template_path: Path) -> None:
    first, _ = _packaged(s3, template_path)
    second, _ = _packaged(s3, template_path)

    assert first == second
    assert len(s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == 1
