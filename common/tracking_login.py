"""The MLflow tracking server's login, as the stack keeps it: a Secrets Manager secret holding a JSON
object with "username" and "password", named by the template parameter below. The trainer reads it
at its first job, the operator's commands when their shell has no login of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOGIN_SECRET_PARAMETER = "MlflowLoginSecretArn"  # noqa: S105  # a parameter's name
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"  # noqa: S105  # the variable's name, not a password


class TrackingLoginError(RuntimeError):
    """The login cannot be used as it is; the message names the secret and what it lacks."""


@dataclass(frozen=True)
class MlflowLogin:
    username: str
    password: str

    def environment(self) -> dict[str, str]:
        """MLflow's own variables: its client reads them on every request, and the processes a
        trainer starts (DVC's stages) inherit them."""
        return {USERNAME_VARIABLE: self.username, PASSWORD_VARIABLE: self.password}


def login_from_environment(environ: dict[str, str]) -> MlflowLogin | None:
    username, password = environ.get(USERNAME_VARIABLE), environ.get(PASSWORD_VARIABLE)
    return MlflowLogin(username, password) if username and password else None


def login_from_secret(secret_id: str, value: dict[str, Any]) -> MlflowLogin:
    missing = [
        key for key in ("username", "password") if not (isinstance(value.get(key), str) and value[key])
    ]
    if missing:
        raise TrackingLoginError(
            f"the MLflow login secret {secret_id} has no {' or '.join(missing)}: it must hold a JSON "
            'object {"username": ..., "password": ...} (docs/aws.md)'
        )
    return MlflowLogin(value["username"], value["password"])
