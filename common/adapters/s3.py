"""The only place arrival's Lambda code touches S3."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore
from botocore.exceptions import ClientError

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


class PreconditionFailedError(Exception):
    """A conditional write lost a race: someone else wrote the object first."""


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_missing(error: ClientError) -> bool:
    return _error_code(error) in {"NoSuchKey", "404", "NotFound"}


class ReadForbiddenError(PermissionError):
    """S3 refused a read. A HEAD's refusal has no body, so AWS names neither the action nor the
    caller: this says which action the read needed, which is what an operator has to check."""


@contextlib.contextmanager
def _naming_a_refused_read(bucket: str, key: str, version_id: str | None) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        if _error_code(error) not in {"403", "AccessDenied"}:
            raise
        action = "s3:GetObjectVersion" if version_id else "s3:GetObject"
        where = f"s3://{bucket}/{key}" + (f" (version {version_id})" if version_id else "")
        raise ReadForbiddenError(
            f"AccessDenied: the caller's role needs {action} to read {where} ({error})"
        ) from error


def head_object(bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
    with _naming_a_refused_read(bucket, key, version_id):
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


def find_object(bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
    """None when the object (or that version of it) no longer exists."""
    try:
        return head_object(bucket, key, version_id)
    except ClientError as error:
        if _is_missing(error) or _error_code(error) == "NoSuchVersion":
            return None
        raise


def exists(bucket: str, key: str) -> bool:
    """Whether the object exists (a HEAD). Without s3:ListBucket on the bucket, AWS answers a missing
    object with 403, which is raised, not taken for "missing"."""
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _is_missing(error):
            return False
        raise
    return True


def download(info: ObjectInfo, destination: Path) -> None:
    extra = {"VersionId": info.version_id} if info.version_id else None
    # The transfer manager starts with a HEAD (of that version), whose refusal says only "403".
    with _naming_a_refused_read(info.bucket, info.key, info.version_id):
        s3_client().download_file(info.bucket, info.key, str(destination), ExtraArgs=extra)


def upload(path: Path, bucket: str, key: str) -> None:
    s3_client().upload_file(str(path), bucket, key)


def copy_object(source: ObjectInfo, bucket: str, key: str) -> None:
    copy_source: dict[str, str] = {"Bucket": source.bucket, "Key": source.key}
    if source.version_id:
        copy_source["VersionId"] = source.version_id
    s3_client().copy_object(Bucket=bucket, Key=key, CopySource=copy_source)  # type: ignore[arg-type]


def get_bytes(bucket: str, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and ETag, or None if there is no such object."""
    try:
        response = s3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _is_missing(error):
            return None
        raise
    return response["Body"].read(), response["ETag"]


def put_json(bucket: str, key: str, document: Any) -> None:
    s3_client().put_object(
        Bucket=bucket, Key=key, Body=json.dumps(document).encode(), ContentType="application/json"
    )


def put_bytes(
    bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream"
) -> str | None:
    """Returns the new object's version id (None in an unversioned bucket)."""
    return (
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type).get("VersionId")
    )


class SdkTooOldError(RuntimeError):
    """The AWS SDK in use cannot send a parameter arrival relies on."""


@cache
def require_conditional_writes() -> None:
    """S3's conditional writes need an SDK that knows PutObject's IfMatch and IfNoneMatch. A Lambda
    runtime's own boto3 may predate them (the packages do not vendor it, to stay small: Makefile,
    RUNTIME_PROVIDED), and botocore would then refuse with "Unknown parameter in input", naming
    neither the cause nor the fix. Checked once per process, before the first conditional write."""
    shape = s3_client().meta.service_model.operation_model("PutObject").input_shape
    members = shape.members if shape is not None else {}
    missing = [name for name in ("IfMatch", "IfNoneMatch") if name not in members]
    if missing:
        raise SdkTooOldError(
            f"this AWS SDK (botocore {botocore.__version__}) cannot send {' or '.join(missing)} on "
            "PutObject, which arrival's leases and idempotency records need: deploy the function with "
            "the boto3 of its requirements.txt vendored (a newer runtime, or a layer with it)"
        )


def put_json_if(bucket: str, key: str, document: Any, *, etag: str | None) -> str:
    """Write only if the object is still at `etag` (or still absent when etag is None): S3's
    conditional writes are arrival's compare-and-swap, since DynamoDB is not available offline.
    Returns the new ETag."""
    return put_bytes_if(bucket, key, json.dumps(document, sort_keys=True).encode(), etag=etag)


def put_bytes_if(bucket: str, key: str, body: bytes, *, etag: str | None) -> str:
    """`put_json_if` for a body already serialised. Raises PreconditionFailedError when the object
    moved on."""
    require_conditional_writes()
    try:
        if etag is None:
            response = s3_client().put_object(
                Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
            )
        else:
            response = s3_client().put_object(
                Bucket=bucket, Key=key, Body=body, IfMatch=etag, ContentType="application/json"
            )
    except ClientError as error:
        if _error_code(error) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise PreconditionFailedError(f"s3://{bucket}/{key}") from error
        raise
    return str(response["ETag"])


def update_json(bucket: str, key: str, change: Callable[[Any | None], Any], attempts: int = 20) -> Any:
    """Read-modify-write of a JSON object under optimistic concurrency: `change` gets the current
    document (None if absent) and returns the new one, or the same object to leave it unchanged."""
    for attempt in range(attempts):
        current = get_bytes(bucket, key)
        document = json.loads(current[0]) if current else None
        updated = change(document)
        if updated is document:
            return document
        try:
            put_json_if(bucket, key, updated, etag=current[1] if current else None)
        except PreconditionFailedError:
            time.sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))  # noqa: S311  # jitter, not crypto
            continue
        return updated
    raise PreconditionFailedError(f"s3://{bucket}/{key}: gave up after {attempts} concurrent updates")


def delete(bucket: str, key: str) -> None:
    s3_client().delete_object(Bucket=bucket, Key=key)


def list_objects(bucket: str, prefix: str) -> list[tuple[str, str]]:
    """The key and ETag of every object under prefix: one ListObjectsV2 call per 1,000 keys."""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [(entry["Key"], entry["ETag"].strip('"')) for page in pages for entry in page.get("Contents", [])]


@dataclass(frozen=True)
class ObjectVersion:
    key: str
    version_id: str  # "null" for an object stored before the bucket was versioned
    etag: str
    size: int
    last_modified: float  # epoch seconds


@dataclass(frozen=True)
class VersionPage:
    versions: list[ObjectVersion]  # delete markers left out
    # Where the next page starts (ListObjectVersions' key and version-id markers); None after the last.
    next_marker: tuple[str, str] | None


def list_versions(bucket: str, after: tuple[str, str] | None, max_keys: int = 1000) -> VersionPage:
    """One page of every version of every object, in key order (a key's versions newest first),
    starting after `after`: a caller can stop between pages and continue later from the marker."""
    markers = {"KeyMarker": after[0], "VersionIdMarker": after[1]} if after else {}
    page = s3_client().list_object_versions(Bucket=bucket, MaxKeys=max_keys, **markers)  # type: ignore[arg-type]
    versions = [
        ObjectVersion(
            key=entry["Key"],
            version_id=entry["VersionId"],
            etag=entry["ETag"].strip('"'),
            size=entry["Size"],
            last_modified=entry["LastModified"].timestamp(),
        )
        for entry in page.get("Versions", [])
    ]
    if not page.get("IsTruncated"):
        return VersionPage(versions, None)
    return VersionPage(versions, (page["NextKeyMarker"], page["NextVersionIdMarker"]))
