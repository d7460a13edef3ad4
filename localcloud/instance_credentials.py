"""An instance's role credentials, as EC2's instance metadata service hands them out: the role of
the instance's profile, assumed with sts:AssumeRole and renewed before it expires. The agent serves
them at IMDS's `iam/security-credentials/<role>`, so an instance's boto3, DVC and MLflow find them
through their own credential chain, as on EC2, and the local cloud's IAM enforcement checks every
call against that role's policies."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

# boto3 refreshes instance credentials 15 minutes before they expire (10 minutes at the latest), so
# what IMDS serves must always be valid for longer than that: renew with 20 minutes still left.
_RENEW_WHEN_LEFT = timedelta(minutes=20)
_SESSION_SECONDS = 3600


class RoleCredentials:
    """The credentials of one instance's role, renewed on demand; thread-safe (IMDS is threaded)."""

    def __init__(self, sts: Any, role_arn: str, instance_id: str) -> None:
        self._sts, self.role_arn, self._instance_id = sts, role_arn, instance_id
        self._lock = threading.Lock()
        self._current: dict[str, Any] | None = None

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[-1]

    def current(self) -> dict[str, Any]:
        with self._lock:
            now = datetime.now(UTC)
            if self._current is None or self._current["Expiration"] - now < _RENEW_WHEN_LEFT:
                self._current = self._sts.assume_role(
                    RoleArn=self.role_arn,
                    RoleSessionName=self._instance_id,
                    DurationSeconds=_SESSION_SECONDS,
                )["Credentials"]
            return dict(self._current)

    def imds_document(self) -> str:
        """The JSON IMDS answers at `iam/security-credentials/<role>`."""
        credentials = self.current()
        return json.dumps(
            {
                "Code": "Success",
                "LastUpdated": _iso(datetime.now(UTC)),
                "Type": "AWS-HMAC",
                "AccessKeyId": credentials["AccessKeyId"],
                "SecretAccessKey": credentials["SecretAccessKey"],
                "Token": credentials["SessionToken"],
                "Expiration": _iso(credentials["Expiration"]),
            }
        )

    def botocore_metadata(self) -> dict[str, str]:
        """The same, in the shape botocore's RefreshableCredentials takes (for the log shipper)."""
        credentials = self.current()
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": _iso(credentials["Expiration"]),
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
