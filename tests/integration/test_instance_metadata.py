"""The worker learns its instance id from instance metadata: here from the agent's stub, over HTTP,
through botocore's IMDSv2 fetcher, as on EC2. Without it a trainer neither beats its heartbeat nor
ends its instance, so the reconciler takes it for dead once the boot grace is over."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from common.adapters.instance import own_instance_id
from localcloud.instance_agent import MetadataStub


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
