"""The tracking server lets no one in without the local cloud's login, and the chain still trains and
registers, its trainers logging in with the login the stack's secret holds; a trainer whose login
the server refuses dead-letters its job with that reason."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from localcloud.deploy import login_secret_name
from tests import datasets
from tests.conftest import TRAINING_STACK
from tests.e2e.conftest import Chain

pytestmark = pytest.mark.e2e

SEARCH = "/api/2.0/mlflow/registered-models/search"


def test_the_tracking_server_refuses_anyone_without_the_login(chain: Chain) -> None:
    login = chain.cloud.tracking_login
    with httpx.Client(base_url=chain.cloud.settings.mlflow_url, timeout=10) as mlflow:
        # GIVEN the local cloud's tracking server
        # WHEN it is called anonymously, or with a wrong password, or with the login
        anonymous = mlflow.get(SEARCH)
        wrong = mlflow.get(SEARCH, auth=(login.username, login.password + "x"))
        logged_in = mlflow.get(SEARCH, auth=(login.username, login.password))
        # THEN only the login gets in; the health check stays open for the supervisor
        assert anonymous.status_code == 401
        assert wrong.status_code == 401
        assert logged_in.status_code == 200
        assert mlflow.get("/health").status_code == 200


def test_the_stacks_trainers_get_where_the_login_is_never_the_login(chain: Chain) -> None:
    # Every training test of this suite then shows that a trainer logs in with it: the tracking
    # server refuses anyone without the login (above).
    stack = chain.cloud.client("cloudformation").describe_stacks(StackName=TRAINING_STACK)["Stacks"][0]
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack["Parameters"]}
    assert login_secret_name(TRAINING_STACK) in parameters["MlflowLoginSecretArn"]


@pytest.fixture
def refused_login(chain: Chain) -> Iterator[None]:
    """The training stack's secret holds a wrong password for the test's length; the trainer reads
    it before each job. Put back afterwards, whatever happened."""
    secrets = chain.cloud.client("secretsmanager")
    name = login_secret_name(TRAINING_STACK)
    login = chain.cloud.tracking_login
    wrong = {"username": login.username, "password": login.password + "-not-it"}
    secrets.put_secret_value(SecretId=name, SecretString=json.dumps(wrong))
    try:
        yield
    finally:
        right = {"username": login.username, "password": login.password}
        secrets.put_secret_value(SecretId=name, SecretString=json.dumps(right))


def test_a_trainer_the_server_refuses_dead_letters_its_job_saying_why(
    chain: Chain, unique: str, refused_login: None
) -> None:
    # GIVEN a stack whose secret holds a login the tracking server refuses
    model = f"refused-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN a dataset lands
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(100, seed=4))

    # THEN the job is not dropped: after its retries it lands in the dead-letter queue, and the
    # reason names the refused login and where it comes from
    reason = chain.dead_letter_reason(model)
    assert "refused the trainer's login (401)" in reason
    assert "MlflowLoginSecretArn" in reason
    assert chain.versions(model) == []
