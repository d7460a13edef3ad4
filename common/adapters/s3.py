"""The only place the ingest path touches S3."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@cache
def s3_client() -> S3Client:
    # Created at first use; AWS_ENDPOINT_URL (LocalStack or not) is read by boto3 itself.
    return boto3.client("s3")


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int


def head_object(bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
    if version_id:
        head = s3_client().head_object(Bucket=bucket, Key=key, VersionId=version_id)
    else:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    return ObjectInfo(
        bucket=bucket,
        key=key,
        version_id=head.get("VersionId"),
        etag=head["ETag"].strip('"'),
        size=head["ContentLength"],
    )


def put_json(bucket: str, key: str, document: dict[str, Any]) -> None:
    s3_client().put_object(
        Bucket=bucket, Key=key, Body=json.dumps(document).encode(), ContentType="application/json"
    )
