"""A Lambda runtime's own boto3 may predate S3's conditional writes; arrival then says so plainly
before its first conditional write, instead of botocore's "Unknown parameter in input"."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from common.adapters import s3


@pytest.fixture(autouse=True)
def fresh_check() -> Iterator[None]:
    s3.require_conditional_writes.cache_clear()
    yield
    s3.require_conditional_writes.cache_clear()


def _sdk_knowing(*parameters: str) -> SimpleNamespace:
    """A client whose service model's PutObject takes only these parameters."""
    members = dict.fromkeys(("Bucket", "Key", "Body", *parameters))
    operation = SimpleNamespace(input_shape=SimpleNamespace(members=members))
    return SimpleNamespace(
        meta=SimpleNamespace(service_model=SimpleNamespace(operation_model=lambda _: operation))
    )


def test_the_sdk_arrival_ships_has_conditional_writes(aws_credentials: None) -> None:
    s3.s3_client.cache_clear()
    s3.require_conditional_writes()  # the lock's botocore: no error


def test_an_sdk_without_if_match_is_named_before_the_first_conditional_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s3, "s3_client", lambda: _sdk_knowing("IfNoneMatch"))

    with pytest.raises(s3.SdkTooOldError, match=r"cannot send IfMatch on PutObject.*vendored"):
        s3.put_json_if("bucket", "lease.json", {"holder": "a"}, etag="e1")
