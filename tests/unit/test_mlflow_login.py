"""The tracking server's login: made once per local cloud and kept across restarts, handed to the
basic-auth app with nothing readable by others; found by the operator's commands in a fixed order;
read by the trainer from the stack's secret before each job."""

from __future__ import annotations

import configparser
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.exceptions import MlflowException, get_error_code
from moto import mock_aws

from cli.target import Target, TargetError, environment_for, tracking_access
from common.adapters import secrets
from common.adapters.tracking import refused_login
from common.settings import WorkerSettings
from common.tracking_login import MlflowLogin, TrackingLoginError
from localcloud import control
from localcloud.deploy import put_login_secret
from localcloud.settings import LocalCloudSettings
from localcloud.tracking_login import login_path, read_login
from localcloud.tracking_server import mlflow_service
from tests.unit.test_worker import OUTPUTS
from worker.main import Trainer, use_tracking_login

# The tracking server's own environment variables: MLflow reads them before the configuration file.
ADMIN_OVERRIDES = {"MLFLOW_AUTH_ADMIN_USERNAME": "intruder", "MLFLOW_AUTH_ADMIN_PASSWORD": "from-the-shell"}


def _settings(state_dir: Path) -> LocalCloudSettings:
    return LocalCloudSettings(state_dir=state_dir, aws_port=4566, mlflow_port=5000)


def _auth_config(env: dict[str, str]) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    return parser["mlflow"]


def _owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_tracking_server_runs_the_basic_auth_app_with_the_clouds_own_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a shell that would set MLflow's admin by its own variables
    for name, value in ADMIN_OVERRIDES.items():
        monkeypatch.setenv(name, value)

    # WHEN the supervisor builds the tracking server for a new local cloud
    service = mlflow_service(_settings(tmp_path))

    # THEN it runs MLflow's basic-auth app, configured from a file only the owner can read
    assert service.argv[service.argv.index("--app-name") + 1] == "basic-auth"
    login = read_login(tmp_path)
    assert login is not None
    config = _auth_config(service.env)
    assert config["default_permission"] == "NO_PERMISSIONS"
    assert config["admin_username"] == login.username
    assert config["admin_password"] == login.password
    assert int(config["auth_cache_ttl_seconds"]) > 0, "a PBKDF2 check on every request slows training"
    assert config["database_uri"] == f"sqlite:///{(tmp_path / 'mlflow' / 'users.db').resolve()}"
    assert _owner_only(Path(service.env["MLFLOW_AUTH_CONFIG_PATH"]))
    assert _owner_only(login_path(tmp_path))
    # AND the form-signing key is the login's, and the shell's admin variables do not reach it
    assert service.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == login.flask_secret_key
    assert not set(ADMIN_OVERRIDES) & set(service.env)
    # AND the password is nowhere on the command line, which any user can read in `ps`
    assert not [argument for argument in service.argv if login.password in argument]


def test_a_restart_or_up_after_down_keeps_the_login_and_its_users(tmp_path: Path) -> None:
    # GIVEN a local cloud whose server has started once and made its user store
    first = mlflow_service(_settings(tmp_path))
    users = tmp_path / "mlflow" / "users.db"
    users.write_bytes(b"the admin, created with the first login")

    # WHEN the server is built again on the same state directory
    again = mlflow_service(_settings(tmp_path))

    # THEN the login, its configuration and its user store are the same
    assert read_login(tmp_path) is not None
    assert _auth_config(again.env) == _auth_config(first.env)
    assert again.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == first.env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert users.read_bytes() == b"the admin, created with the first login"


def test_a_login_made_anew_starts_its_user_store_anew(tmp_path: Path) -> None:
    # GIVEN a cloud whose login file was deleted after its user store was made
    mlflow_service(_settings(tmp_path))
    users = tmp_path / "mlflow" / "users.db"
    users.write_bytes(b"an admin with the old password")
    old = read_login(tmp_path)
    login_path(tmp_path).unlink()

    # WHEN the server is built again
    mlflow_service(_settings(tmp_path))

    # THEN a new login is made, and the store that MLflow would keep the old password in is gone
    assert read_login(tmp_path) != old
    assert not users.exists()


def test_each_local_cloud_makes_a_login_of_its_own(tmp_path: Path) -> None:
    one, two = mlflow_service(_settings(tmp_path / "one")), mlflow_service(_settings(tmp_path / "two"))

    assert _auth_config(one.env)["admin_password"] != _auth_config(two.env)["admin_password"]
    assert len(_auth_config(one.env)["admin_password"]) >= 32


def test_the_cloud_keeps_the_operators_login_out_of_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "me")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mine")

    environment = control._environment(LocalCloudSettings())

    assert "MLFLOW_TRACKING_USERNAME" not in environment
    assert "MLFLOW_TRACKING_PASSWORD" not in environment


FROM_SHELL = {"MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "mine"}
FROM_STACK = MlflowLogin("stack-user", "stack-password")


@pytest.fixture
def cloud(tmp_path: Path) -> LocalCloudSettings:
    """A local cloud whose server has made its login."""
    mlflow_service(_settings(tmp_path))
    return _settings(tmp_path)


def _stack_login(stack_name: str) -> MlflowLogin:
    assert stack_name == "prod"
    return FROM_STACK


def test_the_shells_login_comes_first(cloud: LocalCloudSettings) -> None:
    for target in Target:
        environ = {"MLFLOW_TRACKING_URI": "https://mlflow.example", **FROM_SHELL}
        access = tracking_access(target, cloud, environ, "prod", _stack_login)
        assert access.login == MlflowLogin("me", "mine")


def test_locally_the_clouds_own_login_comes_next_without_asking_the_stack(cloud: LocalCloudSettings) -> None:
    def no_network(stack_name: str) -> MlflowLogin:
        raise AssertionError("the local cloud's login is on disk")

    # Half a login in the shell is no login: the cloud's own is used whole.
    access = tracking_access(Target.local, cloud, {"MLFLOW_TRACKING_USERNAME": "me"}, "prod", no_network)

    login = read_login(cloud.state_dir)
    assert login is not None
    assert access.uri == cloud.mlflow_url
    assert access.login == MlflowLogin(login.username, login.password)


def test_on_aws_the_stacks_secret_comes_next_never_a_local_clouds(cloud: LocalCloudSettings) -> None:
    environ = {"MLFLOW_TRACKING_URI": "https://mlflow.example", "ARRIVAL_STACK_NAME": "prod"}

    assert tracking_access(Target.aws, cloud, environ, stack_login=_stack_login).login == FROM_STACK


def test_without_any_login_the_commands_go_anonymous(tmp_path: Path) -> None:
    empty = _settings(tmp_path)  # no server ever started here

    assert tracking_access(Target.local, empty, {}).login is None
    aws = tracking_access(Target.aws, empty, {"MLFLOW_TRACKING_URI": "https://m"}, "prod", lambda _: None)
    assert aws.login is None
    with pytest.raises(TargetError, match="MLFLOW_TRACKING_URI"):
        tracking_access(Target.aws, empty, {}, "prod", _stack_login)


def test_the_commands_environment_carries_the_login_as_mlflows_own_variables(
    cloud: LocalCloudSettings,
) -> None:
    environment = environment_for(Target.local, cloud, cloud_running=True, environ={})
    login = read_login(cloud.state_dir)

    assert login is not None
    assert environment["MLFLOW_TRACKING_URI"] == cloud.mlflow_url
    assert environment["MLFLOW_TRACKING_USERNAME"] == login.username
    assert environment["MLFLOW_TRACKING_PASSWORD"] == login.password
    # What `arrival env` will print is this access's environment, the same three variables.
    assert tracking_access(Target.local, cloud, {}).environment() == {
        name: environment[name]
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }


def test_a_target_chosen_with_its_own_endpoint_gains_only_the_login_and_local_packaging(
    cloud: LocalCloudSettings,
) -> None:
    pointed = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5566", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5050"}

    environment = environment_for(Target.local, cloud, cloud_running=False, environ=pointed)

    assert set(environment) == {
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "ARRIVAL_VENDOR_LAMBDA_DEPS",
    }


@pytest.fixture
def secretsmanager(aws_credentials: None) -> Iterator[None]:
    secrets.secrets_client.cache_clear()
    with mock_aws():
        yield
    secrets.secrets_client.cache_clear()


@pytest.fixture
def tracking_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's process environment, without a login of its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)


def test_the_deploy_keeps_one_secret_per_stack_and_updates_it(secretsmanager: None) -> None:
    first = put_login_secret("prod/mlflow-login", "arrival-admin", "one")
    again = put_login_secret("prod/mlflow-login", "arrival-admin", "two")

    assert first == again
    assert secrets.secret_json(first) == {"username": "arrival-admin", "password": "two"}


def test_the_trainer_logs_in_with_the_secret_before_each_job(
    secretsmanager: None, tracking_environment: None
) -> None:
    arn = put_login_secret("prod/mlflow-login", "arrival-admin", "first")
    settings = WorkerSettings(mlflow_login_secret=arn)

    use_tracking_login(settings)
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "arrival-admin",
        "first",
    )

    # A rotation is picked up by the next job.
    put_login_secret("prod/mlflow-login", "arrival-admin", "rotated")
    use_tracking_login(settings)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "rotated"


def test_a_secret_without_a_password_fails_the_job_naming_the_secret_and_the_key(
    secretsmanager: None, tracking_environment: None
) -> None:
    client = boto3.client("secretsmanager")
    arn = client.create_secret(Name="prod/mlflow-login", SecretString=json.dumps({"username": "u"}))["ARN"]

    with pytest.raises(TrackingLoginError, match=r"prod/mlflow-login.*has no password"):
        use_tracking_login(WorkerSettings(mlflow_login_secret=arn))


def test_without_a_secret_the_trainer_goes_anonymous_and_says_so(
    tracking_environment: None, caplog: pytest.LogCaptureFixture
) -> None:
    use_tracking_login(WorkerSettings(mlflow_login_secret=""))

    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert "ARRIVAL_WORKER_MLFLOW_LOGIN_SECRET" in caplog.text


def _as_the_rest_client_raises(status: int) -> MlflowException:
    """MLflow's REST client's error for a status whose body is not JSON (the basic-auth app's 401)."""
    code = get_error_code(status)  # type: ignore[no-untyped-call]
    return MlflowException(f"API request failed with error code {status} != 200", error_code=code)


def test_a_401_from_the_tracking_server_is_told_apart_from_other_failures() -> None:
    assert refused_login(_as_the_rest_client_raises(401))
    assert not refused_login(_as_the_rest_client_raises(404))
    assert not refused_login(_as_the_rest_client_raises(500))
    assert not refused_login(RuntimeError("error code 401"))


def test_a_job_the_tracking_server_refused_dead_letters_saying_which_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a trainer on its last attempt at a job
    reasons: list[str] = []
    trainer = Trainer(WorkerSettings(max_attempts=1), OUTPUTS)
    monkeypatch.setattr(
        trainer, "dead_letter", lambda model, message, attempts, reason, trace: reasons.append(reason)
    )
    job = {"ReceiptHandle": "h", "MessageId": "m", "Body": '{"model": "iris"}', "Attributes": {}}

    # WHEN the tracking server refused its login
    trainer.failed("iris", [job], _as_the_rest_client_raises(401))

    # THEN the reason says so, and where the login comes from, before MLflow's own words
    (reason,) = reasons
    assert reason.startswith("the tracking server refused the trainer's login (401)")
    assert "MlflowLoginSecretArn" in reason and "error code 401" in reason
