"""What happens to one object that lands in the raw bucket.

Walking skeleton: it records a receipt for the object in the processed bucket. The ingest issue
replaces the receipt with validation, preprocessing and dispatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from common.adapters import s3
from common.observability import logger
from common.settings import get_ingest_settings


@dataclass(frozen=True)
class RawObject:
    bucket: str
    key: str  # already URL-decoded
    version_id: str | None = None


@dataclass(frozen=True)
class IngestOutcome:
    status: Literal["ingested", "ignored"]
    key: str
    reason: str | None = None


def ingest_object(raw: RawObject) -> IngestOutcome:
    if raw.key.endswith("/"):
        logger.info("ignored a folder marker", extra={"key": raw.key})
        return IngestOutcome("ignored", raw.key, "folder marker")
    info = s3.head_object(raw.bucket, raw.key, raw.version_id)
    receipt_key = f"receipts/{raw.key}.json"
    s3.put_json(get_ingest_settings().processed_bucket, receipt_key, asdict(info))
    logger.info("ingested", extra={"source": f"s3://{raw.bucket}/{raw.key}", "size": info.size})
    return IngestOutcome("ingested", raw.key)
