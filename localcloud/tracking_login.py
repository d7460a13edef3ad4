"""The local tracking server's login: made once per local cloud, kept in its state directory.

The server (`localcloud/tracking_server.py`) creates its admin user from it, the deploy copies it
into the stack's Secrets Manager secret for the trainers, and the operator's commands read it from
here. Nothing but the standard library, so the CLI can read it without importing boto3 or MLflow.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ADMIN_USERNAME = "arrival-admin"
# Owner-only: anyone who reads it may register models and move the champion.
_OWNER_ONLY = 0o600


@dataclass(frozen=True)
class TrackingLogin:
    username: str
    password: str
    # The basic-auth app signs its forms (CSRF) with it; it must not change between its workers
    # or across a restart, so it is kept with the login.
    flask_secret_key: str


def login_path(state_dir: Path) -> Path:
    return state_dir / "mlflow" / "login.json"


def read_login(state_dir: Path) -> TrackingLogin | None:
    """The local cloud's login, or None if this state directory has none yet."""
    try:
        stored = json.loads(login_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    return TrackingLogin(stored["username"], stored["password"], stored["flask_secret_key"])


def ensure_login(state_dir: Path) -> tuple[TrackingLogin, bool]:
    """The state directory's login, made (random, owner-only) if it has none. The flag says whether
    it is new: a user store made for an older login must then be started afresh."""
    if (existing := read_login(state_dir)) is not None:
        return existing, False
    login = TrackingLogin(ADMIN_USERNAME, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
    write_owner_only(
        login_path(state_dir),
        json.dumps(
            {
                "username": login.username,
                "password": login.password,
                "flask_secret_key": login.flask_secret_key,
            }
        ),
    )
    return login, True


def write_owner_only(path: Path, text: str) -> None:
    """Written through a descriptor opened 0600, so the file is never readable by others, not even
    for a moment, whatever the umask; replaced atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OWNER_ONLY)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    scratch.replace(path)
