"""The templates stay deployable to real AWS (cfn-lint), and packaging is reproducible."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint

from localcloud.deploy import _zip_directory, load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = [
    ROOT / "template.yaml",
    ROOT / "tests/integration/failure_functions/template.yaml",
    ROOT / "deploy/github-oidc.yaml",  # the deploy workflow's role, deployed once per account
]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.parent.name)
def test_template_passes_cfn_lint(template: Path) -> None:
    # Errors and warnings only, the experimental ones included: informational rules are opinions
    # (retention, deletion policies), and running them (cfn-lint's lint_all) took 52 s of the 57.
    matches = [
        match
        for match in lint(template.read_text(), config=ManualArgs(include_experimental=True))
        if match.rule.severity in {"error", "warning"}
    ]
    assert [str(match) for match in matches] == []


def test_short_form_intrinsics_load_as_their_long_form() -> None:
    template = load_template(ROOT / "template.yaml")
    queue = template["Resources"]["RawBucket"]["Properties"]["NotificationConfiguration"]
    assert queue["QueueConfigurations"][0]["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    assert template["Resources"]["IngestFunction"]["Properties"]["Timeout"] == {"Ref": "IngestTimeoutSeconds"}


def test_timeouts_and_retries_are_parameters() -> None:
    parameters = load_template(ROOT / "template.yaml")["Parameters"]
    for name in ["IngestTimeoutSeconds", "IngestMaxReceiveCount", "IngestVisibilityTimeoutSeconds"]:
        assert name in parameters


def test_the_same_code_zips_to_the_same_bytes(tmp_path: Path) -> None:
    source = tmp_path / "code"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "app.py").write_text("x = 1\n")
    (source / "pkg" / "__pycache__").mkdir()
    (source / "pkg" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")

    _zip_directory(source, tmp_path / "one.zip")
    (source / "pkg" / "app.py").touch()  # a new mtime must not change the archive
    _zip_directory(source, tmp_path / "two.zip")

    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    assert zipfile.ZipFile(tmp_path / "one.zip").namelist() == ["pkg/app.py"]


def _tracking_uri_parameter() -> dict[str, str]:
    parameter: dict[str, str] = load_template(ROOT / "template.yaml")["Parameters"]["MlflowTrackingUri"]
    return parameter


def test_aws_refuses_a_stack_without_a_tracking_uri() -> None:
    # GIVEN the template's rules (AWS evaluates them when a change set is created; LocalStack does not)
    template = load_template(ROOT / "template.yaml")
    assertions = [assertion for rule in template["Rules"].values() for assertion in rule["Assertions"]]
    refusing_empty = [
        assertion
        for assertion in assertions
        if assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "MlflowTrackingUri"}, ""]}]}
    ]

    # THEN the parameter has no default but the empty one, and a rule refuses that, saying what to pass
    assert _tracking_uri_parameter().get("Default", "") == ""
    assert len(refusing_empty) == 1
    assert "MlflowTrackingUri=http" in refusing_empty[0]["AssertDescription"]


@pytest.mark.parametrize(
    "value",
    ["http://10.0.1.20:5000", "https://mlflow.example.com", "http://mlflow.internal:5000/tracking/"],
)
def test_the_tracking_uri_pattern_accepts_a_server_url(value: str) -> None:
    assert re.fullmatch(_tracking_uri_parameter()["AllowedPattern"], value)


@pytest.mark.parametrize(
    "value",
    [
        "mlflow:5000",  # no scheme
        "file:///tmp/mlruns",  # the trainer's own disk dies with the instance
        "s3://bucket/mlruns",
        "http://",
        "http://host:5000/$(reboot)",  # the value is expanded unquoted in the user data script
        "http://host:5000; reboot",
        "http://user:secret@host:5000",  # no credentials in user data  # pragma: allowlist secret
    ],
)
def test_the_tracking_uri_pattern_refuses_anything_else(value: str) -> None:
    parameter = _tracking_uri_parameter()

    assert not re.fullmatch(parameter["AllowedPattern"], value)
    assert "http://" in parameter["ConstraintDescription"]


def _login_secret_parameter() -> dict[str, str]:
    parameter: dict[str, str] = load_template(ROOT / "template.yaml")["Parameters"]["MlflowLoginSecretArn"]
    return parameter


def test_aws_refuses_a_stack_without_an_mlflow_login_secret() -> None:
    template = load_template(ROOT / "template.yaml")
    assertions = [assertion for rule in template["Rules"].values() for assertion in rule["Assertions"]]
    refusing_empty = [
        assertion
        for assertion in assertions
        if assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "MlflowLoginSecretArn"}, ""]}]}
    ]

    assert _login_secret_parameter().get("Default", "") == ""
    assert len(refusing_empty) == 1
    assert "MlflowLoginSecretArn=arn:aws:secretsmanager:" in refusing_empty[0]["AssertDescription"]


def test_the_login_secret_pattern_takes_a_full_secret_arn_only() -> None:
    pattern = _login_secret_parameter()["AllowedPattern"]

    assert re.fullmatch(
        pattern, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:arrival/mlflow-login-AbCdEf"
    )
    assert re.fullmatch(pattern, "")
    for refused in [
        "arrival/mlflow-login",  # a name: the trainer's grant needs the ARN
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:arrival/mlflow-login",  # partial ARN
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*",
        "arn:aws:ssm:eu-west-1:123456789012:parameter/x-AbCdEf",
    ]:
        assert not re.fullmatch(pattern, refused), refused


def test_the_trainer_user_data_names_the_login_secret_never_the_login() -> None:
    template = load_template(ROOT / "template.yaml")
    user_data = template["Resources"]["TrainerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = user_data["Fn::Base64"]["Fn::Sub"]

    assert "export ARRIVAL_WORKER_MLFLOW_LOGIN_SECRET=${MlflowLoginSecretArn}" in script
    assert "MLFLOW_TRACKING_USERNAME" not in script and "MLFLOW_TRACKING_PASSWORD" not in script
