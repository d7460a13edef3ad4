"""What happens to one object that lands in the raw bucket: validate it against its model's contract,
quarantine it with a report, or preprocess it to Parquet, accept it exactly once, and dispatch
training.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from common import tabular
from common.adapters import events, s3, sqs
from common.adapters.idempotency import S3PersistenceLayer
from common.contracts import DataContract, DataFormat, data_format_of, parse_contract
from common.layout import accepted_list_hash, accepted_list_key, contract_key
from common.observability import logger
from common.reconcile import ensure_trainer
from common.settings import PipelineSettings, get_pipeline_settings
from common.validation import DatasetRejectedError, Rule, reject, validate


class Outcome(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    quarantined = "quarantined"
    ignored = "ignored"


@dataclass(frozen=True)
class RawObject:
    bucket: str
    key: str  # already URL-decoded
    version_id: str | None = None


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    key: str
    model: str | None = None
    detail: str = ""
    content_hash: str | None = None


@dataclass(frozen=True)
class ConvertedDataset:
    path: Path
    content_hash: str
    rows_read: int
    rows_written: int
    duplicate_rows: int


def load_contract(settings: PipelineSettings, model: str) -> DataContract | None:
    found = s3.get_bytes(settings.config_bucket, contract_key(model)) if model else None
    return parse_contract(found[0]) if found else None


def _check_before_reading(info: s3.ObjectInfo, data_format: DataFormat, contract: DataContract) -> None:
    if info.size == 0:
        raise reject(Rule.empty_file, "the file is empty (0 bytes)")
    if info.size > contract.limits.max_file_bytes:
        raise reject(
            Rule.file_too_large, f"{info.size} bytes; the contract allows {contract.limits.max_file_bytes}"
        )
    if data_format not in contract.limits.formats:
        allowed = ", ".join(fmt.value for fmt in contract.limits.formats)
        raise reject(
            Rule.unsupported_format, f"{data_format.value} is not accepted; the contract allows {allowed}"
        )


def _chunks(
    stream: BinaryIO, local: Path, data_format: DataFormat, contract: DataContract, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    if data_format is DataFormat.parquet:
        # Parquet keeps its schema in a footer: it is read from disk, batch by batch.
        return tabular.parquet_chunks(local, chunk_rows)
    plain = tabular.decompressed(stream, data_format, contract.limits.max_file_bytes)
    return tabular.csv_chunks(plain, contract, chunk_rows)


def convert(
    info: s3.ObjectInfo, data_format: DataFormat, contract: DataContract, scratch: Path, chunk_rows: int
) -> ConvertedDataset:
    """Stream the file chunk by chunk through cleaning, validation and de-duplication into Parquet,
    so memory stays bounded whatever the file's size. The object is first copied to local disk
    (the size check bounds it): reading it from S3 at the pace of validation kept one connection
    open for minutes, and a slow reader's connection gets reset."""
    local = scratch / "source"
    s3.download(info, local)
    deduplicate = tabular.DuplicateRowFilter()
    output = scratch / "processed.parquet"
    sink = tabular.ParquetSink(output, contract)
    rows_read = 0
    try:
        with local.open("rb") as stream:
            for chunk in _chunks(stream, local, data_format, contract, chunk_rows):
                rows_read += len(chunk)
                sink.write(deduplicate(validate(tabular.strip_whitespace(chunk), contract)))
    finally:
        sink.close()
    if rows_read == 0:
        raise reject(Rule.header_only, "the file has a header but no rows")
    if sink.rows < contract.limits.min_rows:
        raise reject(
            Rule.too_few_rows,
            f"{sink.rows} distinct rows; the contract needs at least {contract.limits.min_rows}",
            rows=sink.rows,
        )
    content_hash = _sha256_of(local)
    return ConvertedDataset(output, content_hash, rows_read, sink.rows, deduplicate.dropped)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _metric(name: str, model: str | None) -> None:
    with single_metric(name=name, unit=MetricUnit.Count, value=1) as metric:
        metric.add_dimension(name="model", value=model or "unknown")


def quarantine(
    settings: PipelineSettings,
    info: s3.ObjectInfo,
    model: str | None,
    rejected: DatasetRejectedError,
    contract: DataContract | None,
) -> IngestResult:
    """Copy the file to the quarantine bucket with a report beside it. The raw object stays."""
    report = {
        "source": {"bucket": info.bucket, "key": info.key, "version_id": info.version_id, "etag": info.etag},
        "size": info.size,
        "model": model,
        "rule": rejected.rule.value,
        "violations": [violation.as_dict() for violation in rejected.violations],
        "contract_hash": contract.content_hash if contract else None,
        "quarantined_at": time.time(),
    }
    s3.copy_object(info, settings.quarantine_bucket, info.key)
    s3.put_json(settings.quarantine_bucket, f"{info.key}.report.json", report)
    logger.warning(
        "dataset quarantined",
        extra={"model": model, "rule": rejected.rule.value, "key": info.key, "reason": str(rejected)},
    )
    _metric("FilesQuarantined", model)
    events.publish(
        settings.event_bus_name,
        "DatasetQuarantined",
        {**report, "report": f"s3://{settings.quarantine_bucket}/{info.key}.report.json"},
    )
    return IngestResult(Outcome.quarantined, info.key, model, str(rejected))


# Records live as long as a duplicate should be recognised; S3 objects cost next to nothing.
idempotency_config = IdempotencyConfig(
    event_key_jmespath="[model, content_hash]",
    expires_after_seconds=365 * 24 * 3600,
    raise_on_no_idempotency_key=True,
)
_idempotency_store = S3PersistenceLayer(
    bucket=lambda: get_pipeline_settings().processed_bucket, prefix="_arrival/idempotency/"
)


@idempotent_function(  # type: ignore[untyped-decorator]
    data_keyword_argument="dataset", persistence_store=_idempotency_store, config=idempotency_config
)
def accept_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    """Add a dataset to its model's accepted list and queue training, once per (model, content).
    A crash half-way is retried by SQS; the list update and the send are both safe to repeat."""
    settings = get_pipeline_settings()
    model = dataset["model"]
    entry = {key: value for key, value in dataset.items() if key != "attempt"}

    def add(document: dict[str, Any] | None) -> dict[str, Any]:
        document = document or {"model": model, "datasets": []}
        if any(known["content_hash"] == entry["content_hash"] for known in document["datasets"]):
            return document
        return {**document, "datasets": [*document["datasets"], entry]}

    accepted = s3.update_json(settings.processed_bucket, accepted_list_key(model), add)
    list_hash = accepted_list_hash(accepted)
    message_id = sqs.send_fifo(
        settings.training_queue_url, {"model": model}, group_id=model, deduplication_id=list_hash
    )
    return {"attempt": dataset["attempt"], "list_hash": list_hash, "message_id": message_id}


def _accept(
    settings: PipelineSettings,
    info: s3.ObjectInfo,
    contract: DataContract,
    converted: ConvertedDataset,
    started_at: float,
) -> IngestResult:
    model = contract.model
    processed_key = f"{model}/data/{converted.content_hash}.parquet"
    s3.upload(converted.path, settings.processed_bucket, processed_key)
    attempt = uuid.uuid4().hex
    lineage = {
        "model": model,
        "content_hash": converted.content_hash,
        "processed_key": processed_key,
        "source": {"bucket": info.bucket, "key": info.key, "version_id": info.version_id, "etag": info.etag},
        "rows_read": converted.rows_read,
        "rows": converted.rows_written,
        "duplicate_rows_dropped": converted.duplicate_rows,
        "contract_hash": contract.content_hash,
        "ingest_started_at": started_at,
        "accepted_at": time.time(),
    }
    result = accept_dataset(dataset={**lineage, "attempt": attempt})
    if result["attempt"] != attempt:
        logger.info(
            "duplicate dataset ignored", extra={"model": model, "content_hash": converted.content_hash}
        )
        _metric("FilesDuplicate", model)
        return IngestResult(
            Outcome.duplicate, info.key, model, "same content already accepted", converted.content_hash
        )
    s3.put_json(settings.processed_bucket, f"{model}/data/{converted.content_hash}.lineage.json", lineage)
    logger.info("dataset accepted", extra={**lineage, "list_hash": result["list_hash"]})
    _metric("FilesAccepted", model)
    outcome = ensure_trainer(settings)
    logger.info("reconciled trainers", extra={"action": outcome.action, "instance_id": outcome.instance_id})
    return IngestResult(
        Outcome.accepted, info.key, model, f"{converted.rows_written} rows", converted.content_hash
    )


def ingest_object(raw: RawObject) -> IngestResult:
    started_at = time.time()
    settings = get_pipeline_settings()
    if raw.key.endswith("/"):
        logger.info("ignored a folder marker", extra={"key": raw.key})
        return IngestResult(Outcome.ignored, raw.key, detail="folder marker")
    data_format = data_format_of(raw.key)
    if data_format is None:
        logger.info("ignored a file of an unsupported type", extra={"key": raw.key})
        return IngestResult(Outcome.ignored, raw.key, detail="unsupported suffix")
    model = raw.key.split("/", 1)[0] if "/" in raw.key else None
    info = s3.head_object(raw.bucket, raw.key, raw.version_id)
    contract = load_contract(settings, model) if model else None
    scratch = settings.scratch_dir / f"ingest-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        if contract is None:
            where = f"contracts/{model}.yaml" if model else "a <model>/ prefix in the key"
            raise reject(Rule.no_contract, f"no data contract for model {model!r} (expected {where})")
        _check_before_reading(info, data_format, contract)
        converted = convert(info, data_format, contract, scratch, settings.chunk_rows)
        return _accept(settings, info, contract, converted, started_at)
    except DatasetRejectedError as rejected:
        return quarantine(settings, info, model, rejected, contract)
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()


def prepare_invocation(context: LambdaContext) -> None:
    """Lets the idempotency records expire with this invocation if it dies mid-way."""
    idempotency_config.register_lambda_context(context)
