"""`eval "$(arrival env)"` sets up a shell: with what it prints, curl reaches the serving API with the
stack's key and MLflow's REST API with the tracking server's login, and without them both refuse."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.conftest import TRAINING_STACK, LocalCloud
from tests.e2e.conftest import arrival

pytestmark = pytest.mark.e2e

# Asks both services as a person's shell would, with and without what `arrival env` exported.
SCRIPT = """
eval "$1"
ask() { curl -s -o /dev/null -w '%{http_code} ' "$@"; }
ask -H "x-api-key: $ARRIVAL_API_KEY" "$ARRIVAL_API_URL/models"
ask "$ARRIVAL_API_URL/models"
ask -u "$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD" \
    "$MLFLOW_TRACKING_URI/api/2.0/mlflow/registered-models/search"
ask "$MLFLOW_TRACKING_URI/api/2.0/mlflow/registered-models/search"
aws_endpoint_is_the_clouds=$([ "$AWS_ENDPOINT_URL" = "$2" ] && echo yes || echo no)
echo "$aws_endpoint_is_the_clouds"
"""


def test_a_shell_set_up_by_arrival_env_reaches_the_api_and_the_registry(
    local_cloud: LocalCloud, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the training stack's serving instance answering (the `api` fixture waits for it)
    # WHEN a person runs `eval "$(arrival env)"` and asks with what it set
    printed = arrival(local_cloud, monkeypatch, "env", "--stack-name", TRAINING_STACK)
    assert printed.exit_code == 0, printed.output
    asked = subprocess.run(
        ["bash", "-c", SCRIPT, "bash", printed.stdout, local_cloud.settings.aws_endpoint_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    # THEN the key and the login are accepted, their absence refused, and AWS calls go to the cloud
    assert asked.stdout.split() == ["200", "403", "200", "401", "yes"], printed.stdout
