"""An S3 persistence layer for the powertools idempotency utility.

powertools ships DynamoDB, Redis and Valkey layers; none of them runs offline (LocalStack's DynamoDB
downloads Java at first use), so we keep records as S3 objects and get DynamoDB's conditional put
from S3's conditional writes (If-None-Match / If-Match).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

from common.adapters import s3


class S3PersistenceLayer(BasePersistenceLayer):
    """Records live at ``<prefix><idempotency key>.json``. The bucket is resolved at first use, so
    building the layer (at import, as the decorator needs) reads no settings and opens no client."""

    def __init__(self, bucket: Callable[[], str], prefix: str = "idempotency/") -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._bucket = bucket
        self._prefix = prefix

    def _key(self, idempotency_key: str) -> str:
        return f"{self._prefix}{idempotency_key}.json"

    @staticmethod
    def _to_document(record: DataRecord) -> dict[str, Any]:
        return {
            "status": record.status,
            "expiry_timestamp": record.expiry_timestamp,
            "in_progress_expiry_timestamp": record.in_progress_expiry_timestamp,
            "response_data": record.response_data,
            "payload_hash": record.payload_hash,
        }

    @staticmethod
    def _to_record(idempotency_key: str, document: dict[str, Any]) -> DataRecord:
        return DataRecord(
            idempotency_key=idempotency_key,
            status=document["status"],
            expiry_timestamp=document.get("expiry_timestamp"),
            in_progress_expiry_timestamp=document.get("in_progress_expiry_timestamp"),
            response_data=document.get("response_data") or "",
            payload_hash=document.get("payload_hash") or "",
        )

    def _read(self, idempotency_key: str) -> tuple[DataRecord, str] | None:
        found = s3.get_bytes(self._bucket(), self._key(idempotency_key))
        if found is None:
            return None
        return self._to_record(idempotency_key, json.loads(found[0])), found[1]

    def _get_record(self, idempotency_key: str) -> DataRecord:
        found = self._read(idempotency_key)
        if found is None:
            raise IdempotencyItemNotFoundError
        return found[0]

    @staticmethod
    def _reusable(record: DataRecord) -> bool:
        """An expired record, or an in-progress one whose Lambda has surely ended, may be replaced."""
        now = time.time()
        if record.expiry_timestamp is not None and record.expiry_timestamp < now:
            return True
        return (
            record.status == STATUS_CONSTANTS["INPROGRESS"]
            and record.in_progress_expiry_timestamp is not None
            and record.in_progress_expiry_timestamp < now * 1000
        )

    def _put_record(self, data_record: DataRecord) -> None:
        key = self._key(data_record.idempotency_key)
        document = self._to_document(data_record)
        try:
            s3.put_json_if(self._bucket(), key, document, etag=None)
            return
        except s3.PreconditionFailedError:
            pass
        existing = self._read(data_record.idempotency_key)
        if existing is None:  # deleted between our two calls: simply retry from the start
            return self._put_record(data_record)
        old_record, etag = existing
        if not self._reusable(old_record):
            self._validate_payload(data_payload=data_record, stored_data_record=old_record)
            self._save_to_cache(data_record=old_record)
            raise IdempotencyItemAlreadyExistsError(old_data_record=old_record)
        try:
            s3.put_json_if(self._bucket(), key, document, etag=etag)
        except s3.PreconditionFailedError as error:
            raise IdempotencyItemAlreadyExistsError from error
        return None

    def _update_record(self, data_record: DataRecord) -> None:
        # Only the holder of the in-progress record updates it, so no condition is needed.
        s3.put_json(self._bucket(), self._key(data_record.idempotency_key), self._to_document(data_record))

    def _delete_record(self, data_record: DataRecord) -> None:
        s3.delete(self._bucket(), self._key(data_record.idempotency_key))
