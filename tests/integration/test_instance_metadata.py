"""The worker learns its instance id, and every process on an instance its role's credentials, from
instance metadata: here from the agent's stub, over HTTP, through botocore's IMDSv2 fetcher and
credential chain, as on EC2. Without it a trainer neither beats its heartbeat nor
ends its instance, so the reconciler takes it for dead once the boot grace is over."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from common.adapters.instance import own_instance_id
from localcloud.instance_agent import MetadataStub
from localcloud.instance_credentials import RoleCredentials


@pytest.fixture
def metadata_stub() -> Iterator[MetadataStub]:
    stub = MetadataStub({"instance-id": "i-0123456789abcdef0", "placement/region": "eu-west-1"})
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield stub
    finally:
        stub.shutdown()
        stub.server_close()


def test_the_worker_reads_its_instance_id_from_the_metadata_service(
    metadata_stub: MetadataStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata_stub.url)
    assert own_instance_id() == "i-0123456789abcdef0"


def test_without_a_metadata_service_the_worker_has_no_instance_id(
    metadata_stub: MetadataStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata_stub.shutdown()
    metadata_stub.server_close()  # nothing listens on the port any more
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata_stub.url)
    assert own_instance_id() is None


class _Sts:
    """AssumeRole's answer, counted; each session expires `lifetime` after it is issued."""

    def __init__(self, lifetime: timedelta) -> None:
        self.lifetime, self.calls = lifetime, 0

    def assume_role(self, RoleArn: str, RoleSessionName: str, DurationSeconds: int) -> dict[str, Any]:  # noqa: N803  # boto3's names
        self.calls += 1
        return {
            "Credentials": {
                "AccessKeyId": f"ASIA{self.calls:016d}",
                "SecretAccessKey": "secret",  # pragma: allowlist secret
                "SessionToken": f"token-{RoleSessionName}",
                "Expiration": datetime.now(UTC) + self.lifetime,
            }
        }


def _served(credentials: RoleCredentials | None) -> MetadataStub:
    stub = MetadataStub({"instance-id": "i-1"}, credentials)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    return stub


def _instance_credentials(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What boto3's default chain finds on an instance: nothing from the environment or files."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)
    return boto3.session.Session().get_credentials()


def test_boto3_on_an_instance_finds_its_profile_roles_credentials_through_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sts = _Sts(lifetime=timedelta(hours=1))
    stub = _served(RoleCredentials(sts, "arn:aws:iam::000000000000:role/arrival-TrainerRole", "i-1"))
    try:
        found = _instance_credentials(stub.url, monkeypatch)
        assert found is not None
        assert found.method == "iam-role"
        frozen = found.get_frozen_credentials()
        assert (frozen.access_key, frozen.token) == ("ASIA0000000000000001", "token-i-1")
    finally:
        stub.shutdown()


def test_credentials_close_to_expiry_are_renewed_before_they_are_served() -> None:
    sts = _Sts(lifetime=timedelta(minutes=10))  # inside boto3's own refresh window
    credentials = RoleCredentials(sts, "arn:aws:iam::000000000000:role/r", "i-1")
    first, second = json.loads(credentials.imds_document()), json.loads(credentials.imds_document())
    assert first["AccessKeyId"] != second["AccessKeyId"]
    lasting = RoleCredentials(_Sts(lifetime=timedelta(hours=1)), "arn:aws:iam::000000000000:role/r", "i-1")
    assert lasting.imds_document() and lasting.current() == lasting.current()


def test_an_instance_without_a_profile_has_no_credentials_as_on_ec2(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = _served(None)
    try:
        assert _instance_credentials(stub.url, monkeypatch) is None
    finally:
        stub.shutdown()
