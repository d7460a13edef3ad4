"""Which cloud a command talks to: the local cloud while it runs, real AWS only when chosen, and
never a tracking store of MLflow's own making."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer
from botocore.exceptions import ClientError
from moto import mock_aws
from typer.testing import CliRunner

# Imported before the tests block sockets: importing it probes the network stack (urllib3's IPv6
# check, the X-Ray emitter), which no test of the CLI's behaviour is about.
import common.ingest  # noqa: F401
from cli import target
from cli.main import app
from cli.target import Target, TargetError, api_key_for_stack, environment_for, shell_environment
from common.adapters import tracking
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import ensure_login

# A state directory with no login in it: the person's own local cloud must not leak into these.
CLOUD = LocalCloudSettings(aws_port=4566, mlflow_port=5000, state_dir=Path("/nonexistent/arrival-unit"))


def no_stack_login(stack_name: str) -> None:
    return None


def test_a_running_local_cloud_is_the_default_target() -> None:
    environment = environment_for(Target.local, CLOUD, cloud_running=True, environ={"AWS_PROFILE": "prod"})

    assert environment == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",  # pragma: allowlist secret
        "AWS_DEFAULT_REGION": "us-east-1",
        "ARRIVAL_VENDOR_LAMBDA_DEPS": "0",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }


def test_without_a_local_cloud_nothing_falls_back_to_the_default_aws_account() -> None:
    with pytest.raises(TargetError, match=r"arrival up.*--aws"):
        environment_for(Target.local, CLOUD, cloud_running=False, environ={"AWS_PROFILE": "prod"})


def test_aws_is_chosen_explicitly_and_needs_its_tracking_server() -> None:
    with pytest.raises(TargetError, match="MLFLOW_TRACKING_URI"):
        environment_for(Target.aws, CLOUD, cloud_running=True, environ={})
    assert (
        environment_for(
            Target.aws,
            CLOUD,
            cloud_running=False,
            environ={"MLFLOW_TRACKING_URI": "https://m"},
            stack_login=no_stack_login,
        )
        == {}
    )


def test_an_endpoint_set_on_purpose_is_kept() -> None:
    pointed = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5566", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5050"}
    assert environment_for(Target.local, CLOUD, cloud_running=False, environ=pointed) == {
        "ARRIVAL_VENDOR_LAMBDA_DEPS": "0"  # a local cloud all the same: its executor installs packages
    }
    with pytest.raises(TargetError, match="MLFLOW_TRACKING_URI is not set"):
        environment_for(Target.local, CLOUD, cloud_running=False, environ={"AWS_ENDPOINT_URL": "http://x"})


@pytest.mark.parametrize(
    "command",
    [
        ["contract", "put", "contracts/iris.yaml"],
        ["demo"],
        ["redrive", "ingest"],
        ["rollback", "--model", "iris"],
        ["reproduce", "champion"],
        ["deploy"],
    ],
)
def test_a_command_run_without_exports_and_without_a_cloud_says_what_to_do_in_one_line(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "ARRIVAL_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))  # no local cloud there
    from localcloud.settings import get_local_cloud_settings

    get_local_cloud_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, command)
    finally:
        get_local_cloud_settings.cache_clear()

    assert result.exit_code == 1
    assert "no local cloud is running" in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line, wrapped at most once


def _every_command(group: Any, prefix: list[str]) -> list[list[str]]:
    """Every command and subcommand's words (typer's click groups have `commands`)."""
    found = []
    for name, command in group.commands.items():
        found.append([*prefix, name])
        if hasattr(command, "commands"):
            found += _every_command(command, [*prefix, name])
    return found


def test_every_commands_help_is_shown_without_a_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN no local cloud, and no exports naming one
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "ARRIVAL_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))
    from localcloud.settings import get_local_cloud_settings

    commands = _every_command(typer.main.get_command(app), [])
    assert ["contract", "put"] in commands and ["deploy"] in commands
    get_local_cloud_settings.cache_clear()
    try:
        # WHEN each command is asked for its help
        results = {" ".join(command): CliRunner().invoke(app, [*command, "--help"]) for command in commands}
    finally:
        get_local_cloud_settings.cache_clear()

    # THEN each shows it: help never needs a cloud
    for command, result in results.items():
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output and "no local cloud" not in result.output, command


def test_status_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(target, "login_from_stack", no_stack_login)
    from localcloud.settings import get_local_cloud_settings

    get_local_cloud_settings.cache_clear()
    try:
        local = CliRunner().invoke(app, ["status"])
        aws = CliRunner().invoke(app, ["--aws", "status", "--json"])
    finally:
        get_local_cloud_settings.cache_clear()
    assert "commands target: local" in local.output
    assert '"target": "aws"' in aws.output


def test_no_tracking_store_is_created_by_accident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    tracking.client.cache_clear()
    try:
        with pytest.raises(tracking.NoTrackingServerError, match="MLFLOW_TRACKING_URI"):
            tracking.client()
    finally:
        tracking.client.cache_clear()
    assert list(tmp_path.iterdir()) == []


@dataclass
class Deploys:
    """What `arrival deploy` asked of localcloud.deploy, which the tests stand in for."""

    calls: list[dict[str, object]]
    secrets: dict[str, tuple[str, str]]


@pytest.fixture
def deploys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Deploys]:
    from localcloud import deploy as deployment
    from localcloud.settings import get_local_cloud_settings

    recorded = Deploys([], {})

    def deploy_stack(
        template: Path, stack_name: str, overrides: dict[str, str], say: object, *, vendor_dependencies: bool
    ) -> dict[str, str]:
        recorded.calls.append(
            {"stack": stack_name, "overrides": overrides, "vendor_dependencies": vendor_dependencies}
        )
        return {}

    def put_login_secret(name: str, username: str, password: str) -> str:
        recorded.secrets[name] = (username, password)
        return f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"

    monkeypatch.setattr(deployment, "deploy_stack", deploy_stack)
    monkeypatch.setattr(deployment, "put_login_secret", put_login_secret)
    monkeypatch.setattr(target, "login_from_stack", no_stack_login)
    for name in ("AWS_ENDPOINT_URL", "ARRIVAL_TARGET", "ARRIVAL_VENDOR_LAMBDA_DEPS"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    # A local cloud's state directory with its own MLflow login, which AWS must never be given.
    ensure_login(tmp_path)
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))
    get_local_cloud_settings.cache_clear()
    before = dict(os.environ)
    yield recorded
    # The CLI points its own process at the target (os.environ): none of that outlives the test.
    os.environ.clear()
    os.environ.update(before)
    get_local_cloud_settings.cache_clear()


def test_deploying_to_aws_vendors_the_functions_dependencies_by_default(
    deploys: Deploys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN AWS as the target and its tracking server, with nothing said about packaging
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")

    # WHEN the stack is deployed, with the secret holding the tracking server's login named
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:arrival/mlflow-login-AbCdEf"
    result = CliRunner().invoke(
        app, ["--aws", "deploy", "--stack-name", "prod", "--parameter", f"MlflowLoginSecretArn={secret}"]
    )

    # THEN it is the same deploy as the local cloud's, with packages AWS can run
    assert result.exit_code == 0, result.output
    assert deploys.calls == [
        {
            "stack": "prod",
            "overrides": {"MlflowLoginSecretArn": secret, "MlflowTrackingUri": "https://mlflow.example"},
            "vendor_dependencies": True,
        }
    ]
    assert "AWS_ENDPOINT_URL" not in os.environ


def test_deploying_to_aws_never_sends_the_local_clouds_login(
    deploys: Deploys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")

    result = CliRunner().invoke(app, ["--aws", "deploy"])

    assert result.exit_code == 0, result.output
    assert deploys.secrets == {}
    assert "MlflowLoginSecretArn" not in deploys.calls[0]["overrides"]  # type: ignore[operator]


def test_the_local_clouds_deploy_skips_vendoring_unless_told_otherwise(
    deploys: Deploys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    skipped = CliRunner().invoke(app, ["deploy", "--stack-name", "local"])
    monkeypatch.setenv("ARRIVAL_VENDOR_LAMBDA_DEPS", "1")
    vendored = CliRunner().invoke(app, ["deploy", "--stack-name", "local"])

    assert skipped.exit_code == vendored.exit_code == 0, skipped.output + vendored.output
    assert [call["vendor_dependencies"] for call in deploys.calls] == [False, True]
    assert set(deploys.secrets) == {"local/mlflow-login"}  # the local cloud's own login, as before


def test_checking_a_file_against_a_local_contract_needs_no_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import datasets

    for name in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "ARRIVAL_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path))  # no local cloud there
    data = tmp_path / "iris.csv"
    data.write_bytes(datasets.to_csv(datasets.iris_frame(50)))
    from localcloud.settings import get_local_cloud_settings

    get_local_cloud_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["contract", "check", str(data), "--contract", "contracts/iris.yaml"]
        )
    finally:
        get_local_cloud_settings.cache_clear()

    assert result.exit_code == 0, result.output
    assert "would be accepted for model iris" in " ".join(result.output.split())


API_KEY = "key-of-the-unit-stack-0123456789"  # pragma: allowlist secret


@dataclass
class Stacks:
    """Stack outputs by stack name (CloudFormation, faked: moto's needs API Gateway's extras), and a
    moto Secrets Manager."""

    outputs: dict[str, dict[str, str]]

    def read(self, stack_name: str) -> dict[str, str]:
        if stack_name not in self.outputs:
            error = {
                "Error": {"Code": "ValidationError", "Message": f"Stack with id {stack_name} does not exist"}
            }
            raise ClientError(error, "DescribeStacks")  # type: ignore[arg-type]
        return self.outputs[stack_name]


@pytest.fixture
def stacks(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stacks]:
    from common.adapters import secrets, stack

    monkeypatch.delenv("ARRIVAL_API_KEY", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env of the working tree's
    faked = Stacks({})
    monkeypatch.setattr(stack, "stack_outputs", faked.read)
    with mock_aws():
        secrets.secrets_client.cache_clear()
        yield faked
        secrets.secrets_client.cache_clear()


def test_the_api_key_is_read_from_the_stacks_secret(stacks: Stacks) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="unit-key", SecretString=API_KEY)["ARN"]
    stacks.outputs["unit-key"] = {"ServingApiKeySecretArn": arn}

    assert api_key_for_stack("unit-key") == API_KEY


def test_arrival_api_key_comes_first(stacks: Stacks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARRIVAL_API_KEY", "key-from-the-environment-0123456789")

    assert (
        api_key_for_stack("no-such-stack") == "key-from-the-environment-0123456789"
    )  # pragma: allowlist secret


@pytest.mark.parametrize(
    ("deployed", "phrase"),
    [(False, "cannot read the API key of stack 'unit-key'"), (True, "no ServingApiKeySecretArn output")],
)
def test_a_stack_without_a_key_says_what_to_do(stacks: Stacks, deployed: bool, phrase: str) -> None:
    if deployed:  # a stack from before the API had a key
        stacks.outputs["unit-key"] = {"ModelsBucketName": "models"}

    with pytest.raises(TargetError, match=re.escape(phrase) + ".*ARRIVAL_API_KEY"):
        api_key_for_stack("unit-key")


def _evaluated(export_lines: str, *names: str) -> list[str]:
    """The variables as a shell sees them after `eval "$(arrival env)"`."""
    script = 'eval "$1"; shift; for name; do printf "%s\\n" "${!name}"; done'
    shown = subprocess.run(
        ["bash", "-c", script, "bash", export_lines, *names], capture_output=True, text=True, check=True
    )
    return shown.stdout.splitlines()


def test_env_points_a_shell_at_the_local_cloud_its_tracking_server_and_the_api(
    stacks: Stacks, tmp_path: Path
) -> None:
    # GIVEN a running local cloud with its tracking login, and a stack whose API key is in its secret
    cloud = LocalCloudSettings(aws_port=4566, mlflow_port=5000, state_dir=tmp_path)
    login, _ = ensure_login(tmp_path)
    arn = boto3.client("secretsmanager").create_secret(Name="env-key", SecretString=API_KEY)["ARN"]
    stacks.outputs["env-stack"] = {"ServingApiKeySecretArn": arn}
    environ = environment_for(Target.local, cloud, cloud_running=True, environ={})

    # WHEN `arrival env` asks for the shell's variables
    found = shell_environment(Target.local, cloud, environ, "env-stack", "http://127.0.0.1:8080")

    # THEN a shell that evaluates them reaches the cloud, the tracking server as its user, and the API
    names = [
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "ARRIVAL_API_URL",
        "ARRIVAL_API_KEY",
    ]
    assert _evaluated(found.export_lines(), *names) == [
        "http://127.0.0.1:4566",
        "us-east-1",
        "http://127.0.0.1:5000",
        login.username,
        login.password,
        "http://127.0.0.1:8080",
        API_KEY,
    ]
    assert found.missing == []


def test_env_for_aws_sets_no_endpoint_and_says_what_it_could_not_find(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN AWS as the target, a tracking server, and a stack with an API but no readable key
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    environ = {"MLFLOW_TRACKING_URI": "https://mlflow.example.com", "AWS_DEFAULT_REGION": "eu-west-1"}
    stacks.outputs["aws-stack"] = {"ServingApiUrl": "https://abc.execute-api.eu-west-1.amazonaws.com/Prod/"}

    found = shell_environment(Target.aws, CLOUD, environ, "aws-stack", None, stack_login=no_stack_login)

    # THEN nothing points boto3 away from AWS, and each missing value is named (on stderr), not guessed
    assert "AWS_ENDPOINT_URL" not in found.variables and "AWS_ACCESS_KEY_ID" not in found.variables
    assert found.variables["ARRIVAL_API_URL"] == "https://abc.execute-api.eu-west-1.amazonaws.com/Prod/"
    assert found.variables["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert [line.split(":")[0] for line in found.missing] == [
        "MLFLOW_TRACKING_USERNAME/PASSWORD",
        "ARRIVAL_API_KEY",
    ]


def test_values_with_quotes_and_spaces_survive_eval() -> None:
    tricky = target.ShellEnvironment({"ARRIVAL_API_KEY": 'a\'b "c" $d `e`'}, [])
    assert _evaluated(tricky.export_lines(), "ARRIVAL_API_KEY") == ['a\'b "c" $d `e`']
