"""What happens to one object that lands in the raw bucket: validate it against its model's contract,
quarantine it with a report, or preprocess it to Parquet, accept it exactly once, and dispatch
training.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from common import outcomes, tabular
from common.adapters import events, s3, sqs
from common.adapters.idempotency import S3PersistenceLayer
from common.contracts import MODEL_NAME, DataContract, DataFormat, data_format_of, parse_contract
from common.layout import (
    accepted_list_hash,
    accepted_list_key,
    contract_key,
    lineage_key,
    processed_dataset_key,
    quarantine_report_key,
)
from common.observability import logger, metric
from common.outcomes import Outcome, Pending, RawObject
from common.reconcile import queue_training, request_trainer
from common.settings import PipelineSettings, get_pipeline_settings
from common.validation import DatasetRejectedError, Rule, reject, validate


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    key: str
    model: str | None = None
    detail: str = ""
    content_hash: str | None = None


@dataclass(frozen=True)
class DownloadedObject:
    info: s3.ObjectInfo
    data_format: DataFormat
    path: Path
    content_hash: str


@dataclass(frozen=True)
class ConvertedDataset:
    path: Path
    rows_read: int
    rows_written: int
    duplicate_rows: int


def load_contract(settings: PipelineSettings, model: str) -> DataContract | None:
    found = s3.get_bytes(settings.config_bucket, contract_key(model)) if model else None
    return parse_contract(found[0]) if found else None


class InvalidContractError(Exception):
    """The model's contract in the config bucket cannot be read."""


def contract_for(settings: PipelineSettings, model: str | None) -> DataContract:
    """The model's contract, or a `no_contract` rejection. A contract filed under another model's
    name is refused: its files would land in that model's list, and the trainer would look the
    champion up under a name nobody uploads to."""
    if not model:
        raise reject(
            Rule.no_contract, f"no data contract for model {model!r} (expected a <model>/ prefix in the key)"
        )
    where = contract_key(model)
    try:
        contract = load_contract(settings, model)
    except (yaml.YAMLError, ValidationError) as error:
        # The operator's mistake, not the file's: the file is retried, then dead-lettered with this
        # reason, and replayed once the contract is fixed.
        raise InvalidContractError(
            f"the contract at s3://{settings.config_bucket}/{where} is not valid ({error}); "
            "fix it with `arrival contract put`, then replay the file with `arrival redrive ingest`"
        ) from error
    if contract is None:
        raise reject(Rule.no_contract, f"no data contract for model {model!r} (expected {where})")
    if contract.model != model:
        raise reject(
            Rule.no_contract,
            f"no data contract for model {model!r}: "
            f"the contract at {where} declares model {contract.model!r}",
        )
    return contract


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


def download(info: s3.ObjectInfo, data_format: DataFormat, scratch: Path) -> DownloadedObject:
    """Copy the object to local disk (the size check bounds it) and hash it. Reading it from S3 at
    the pace of validation kept one connection open for minutes, and a slow reader's connection
    gets reset. Hashing first lets the idempotency check run before the costly conversion: 200 MB
    hash in 0.14 s and convert in about 21 s (benchmarks/results/ingest.md)."""
    local = scratch / "source"
    s3.download(info, local)
    return DownloadedObject(info, data_format, local, _sha256_of(local))


def convert(
    source: DownloadedObject, contract: DataContract, output: Path, chunk_rows: int
) -> ConvertedDataset:
    """Stream the file chunk by chunk through cleaning, validation and de-duplication into Parquet,
    so memory stays bounded whatever the file's size.

    A CSV is read first with its numbers parsed as numbers by the C parser: on a million rows of 20
    numbers, turning text into numbers took most of the ingest function's 10 s, and the function now
    takes about 3.4 s (the `ingest` column of benchmarks/results/training_lightgbm.md). A file
    that pass cannot read, or that breaks the contract, is read again as text from the start, so
    that whatever is quarantined is judged, and reported, by the text reader alone, cell by cell;
    only such a file pays for the second pass."""
    if source.data_format is not DataFormat.parquet:
        with contextlib.suppress(tabular.TextInNumericColumnError, DatasetRejectedError):
            return _convert(source, contract, output, chunk_rows, numbers=True)
    return _convert(source, contract, output, chunk_rows, numbers=False)


def _convert(
    source: DownloadedObject, contract: DataContract, output: Path, chunk_rows: int, *, numbers: bool
) -> ConvertedDataset:
    deduplicate = tabular.DuplicateRowFilter()
    sink = tabular.ParquetSink(output, contract)
    rows_read = 0
    try:
        with source.path.open("rb") as stream:
            chunks = tabular.chunks(
                source.path, stream, source.data_format, contract, chunk_rows, numbers=numbers
            )
            for chunk in chunks:
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
    return ConvertedDataset(output, rows_read, sink.rows, deduplicate.dropped)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# A redelivery comes from SQS, which keeps a message at most 14 days from its first send, dead-letter
# queue and redrive included; a quarantine need be recognised no longer than that.
quarantine_config = IdempotencyConfig(
    event_key_jmespath="source.[bucket, key, version_id, etag]",
    expires_after_seconds=14 * 24 * 3600,
    raise_on_no_idempotency_key=True,
)
# One store per idempotent function: powertools configures a store once, with its first config.
_quarantine_store = S3PersistenceLayer(
    bucket=lambda: get_pipeline_settings().processed_bucket, prefix="_arrival/idempotency/"
)


@idempotent_function(  # type: ignore[untyped-decorator]
    data_keyword_argument="report", persistence_store=_quarantine_store, config=quarantine_config
)
def record_quarantine(
    report: dict[str, Any], info: s3.ObjectInfo, rejected: DatasetRejectedError, attempt: str
) -> dict[str, Any]:
    """Copy the file to the quarantine bucket with its report beside it, and announce it, once per
    version of the source object: a redelivered bad file publishes no second event, and its report
    stays as first written. The raw object stays."""
    settings = get_pipeline_settings()
    where = report["quarantine_key"]
    s3.copy_object(info, settings.quarantine_bucket, where)
    s3.put_json(settings.quarantine_bucket, quarantine_report_key(where), report)
    logger.warning(
        "dataset quarantined",
        extra={"model": report["model"], "rule": report["rule"], "key": info.key, "reason": str(rejected)},
    )
    metric("FilesQuarantined", report["model"])
    events.publish(
        settings.event_bus_name,
        "DatasetQuarantined",
        {**report, "report": f"s3://{settings.quarantine_bucket}/{quarantine_report_key(where)}"},
    )
    return {"attempt": attempt}


_S3_MAX_KEY_BYTES = 1024


def quarantine_key(key: str) -> str:
    """Where a rejected file goes in the quarantine bucket, its report at quarantine_report_key():
    its own key, unless that has an empty, '.' or '..' segment or a control character (a tool that
    copies the bucket to disk resolves them out of the model's folder, or worse), or is too long to
    take the suffix (S3 keys end at 1,024 bytes). Those go to `<model>/_unsafe-keys/<sha256 of the
    key>`; the report keeps the original key."""
    segments = key.split("/")
    unsafe = any(segment in {"", ".", ".."} for segment in segments) or any(ord(c) < 32 for c in key)
    if not unsafe and len(quarantine_report_key(key).encode()) <= _S3_MAX_KEY_BYTES:
        return key
    folder = f"{segments[0]}/" if MODEL_NAME.match(segments[0]) and len(segments) > 1 else ""
    data_format = data_format_of(key)
    suffix = f".{data_format.value}" if data_format else ""
    return f"{folder}_unsafe-keys/{hashlib.sha256(key.encode()).hexdigest()}{suffix}"


def quarantine(
    info: s3.ObjectInfo, model: str | None, rejected: DatasetRejectedError, contract: DataContract | None
) -> IngestResult:
    report = {
        "source": {"bucket": info.bucket, "key": info.key, "version_id": info.version_id, "etag": info.etag},
        "quarantine_key": quarantine_key(info.key),
        "size": info.size,
        "model": model,
        "rule": rejected.rule.value,
        "violations": [violation.as_dict() for violation in rejected.violations],
        "contract_hash": contract.content_hash if contract else None,
        "quarantined_at": time.time(),
    }
    attempt = uuid.uuid4().hex
    if record_quarantine(report=report, info=info, rejected=rejected, attempt=attempt)["attempt"] != attempt:
        logger.info(
            "dataset already quarantined; no second event",
            extra={"model": model, "rule": rejected.rule.value, "key": info.key},
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
def accept_dataset(
    dataset: dict[str, Any], source: DownloadedObject, contract: DataContract
) -> dict[str, Any]:
    """Convert a dataset, add it to its model's accepted list and queue training, once per (model,
    content). Powertools looks the record up before this runs, so bytes already accepted are never
    converted again; bytes another invocation is converting fail this record, to be retried after
    the queue's visibility timeout, when that one is done. A crash half-way is retried by SQS: every
    step is safe to repeat, and the lineage is written before the list names the dataset."""
    settings = get_pipeline_settings()
    model = dataset["model"]
    content_hash = source.content_hash
    converted = convert(source, contract, source.path.with_name("processed.parquet"), settings.chunk_rows)
    processed_key = processed_dataset_key(model, content_hash)
    s3.upload(converted.path, settings.processed_bucket, processed_key)
    info = source.info
    lineage = {
        "model": model,
        "content_hash": content_hash,
        "processed_key": processed_key,
        "source": {"bucket": info.bucket, "key": info.key, "version_id": info.version_id, "etag": info.etag},
        "rows_read": converted.rows_read,
        "rows": converted.rows_written,
        "duplicate_rows_dropped": converted.duplicate_rows,
        "contract_hash": contract.content_hash,
        "ingest_started_at": dataset["ingest_started_at"],
        "accepted_at": time.time(),
    }
    s3.put_json(settings.processed_bucket, lineage_key(model, content_hash), lineage)

    def add(document: dict[str, Any] | None) -> dict[str, Any]:
        document = document or {"model": model, "datasets": []}
        if any(known["content_hash"] == content_hash for known in document["datasets"]):
            return document
        return {**document, "datasets": [*document["datasets"], lineage]}

    accepted = s3.update_json(settings.processed_bucket, accepted_list_key(model), add)
    list_hash = accepted_list_hash(accepted)
    message_id = queue_training(settings.processed_bucket, settings.training_queue_url, model, list_hash)
    return {
        "attempt": dataset["attempt"],
        "list_hash": list_hash,
        "message_id": message_id,
        "lineage": lineage,
    }


def _accept(
    settings: PipelineSettings, source: DownloadedObject, contract: DataContract, started_at: float
) -> IngestResult:
    model, content_hash = contract.model, source.content_hash
    attempt = uuid.uuid4().hex
    result = accept_dataset(
        dataset={
            "model": model,
            "content_hash": content_hash,
            "attempt": attempt,
            "ingest_started_at": started_at,
        },
        source=source,
        contract=contract,
    )
    if result["attempt"] != attempt:
        logger.info("duplicate dataset ignored", extra={"model": model, "content_hash": content_hash})
        metric("FilesDuplicate", model)
        return IngestResult(
            Outcome.duplicate, source.info.key, model, "same content already accepted", content_hash
        )
    lineage = result["lineage"]
    logger.info("dataset accepted", extra={**lineage, "list_hash": result["list_hash"]})
    metric("FilesAccepted", model)
    outcome = request_trainer(settings)
    logger.info("reconciled trainers", extra={"action": outcome.action, "instance_id": outcome.instance_id})
    return IngestResult(Outcome.accepted, source.info.key, model, f"{lineage['rows']} rows", content_hash)


def ingest_object(raw: RawObject) -> IngestResult:
    """Judge one version of a raw object, and record what became of it where the sweep looks
    (common/outcomes.py): `received` first, so a file ingest is still retrying is not taken for one
    whose notification was lost, then its outcome. A failure leaves it `received`: its notification
    is retried, then dead-lettered with its reason."""
    settings = get_pipeline_settings()
    if not raw.key.endswith("/") and data_format_of(raw.key) is not None:
        outcomes.mark_pending(settings.processed_bucket, raw, Pending.received)
    result = _judge(settings, raw)
    outcomes.record_outcome(
        settings.processed_bucket, raw, result.outcome, detail=result.detail, model=result.model
    )
    return result


def _judge(settings: PipelineSettings, raw: RawObject) -> IngestResult:
    started_at = time.time()
    if raw.key.endswith("/"):
        logger.info("ignored a folder marker", extra={"key": raw.key})
        return IngestResult(Outcome.ignored, raw.key, detail="folder marker")
    data_format = data_format_of(raw.key)
    if data_format is None:
        logger.info("ignored a file of an unsupported type", extra={"key": raw.key})
        return IngestResult(Outcome.ignored, raw.key, detail="unsupported suffix")
    model = raw.key.split("/", 1)[0] if "/" in raw.key else None
    info = s3.find_object(raw.bucket, raw.key, raw.version_id)
    if info is None:
        # A very late notification (a redrive days later) for a version someone deleted since: there
        # is nothing left to judge, and retrying would only fill the dead-letter queue.
        logger.warning("the object no longer exists; nothing to ingest", extra={"key": raw.key})
        metric("FilesVanished", model)
        return IngestResult(Outcome.ignored, raw.key, model, "the object no longer exists")
    contract: DataContract | None = None
    scratch = settings.scratch_dir / f"ingest-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        contract = contract_for(settings, model)
        _check_before_reading(info, data_format, contract)
        source = download(info, data_format, scratch)
        tabular.check_inflated_size(source.path, data_format, contract.limits.max_file_bytes)
        return _accept(settings, source, contract, started_at)
    except DatasetRejectedError as rejected:
        return quarantine(info, model, rejected, contract)
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()


def prepare_invocation(context: LambdaContext) -> None:
    """Lets the idempotency records expire with this invocation if it dies mid-way."""
    idempotency_config.register_lambda_context(context)
    quarantine_config.register_lambda_context(context)


def dead_letter_if_last_delivery(body: str, receive_count: int, error: Exception) -> bool:
    """On a notification's last delivery, send it to the dead-letter queue with the reason it
    failed (SQS's own redrive policy would move it without one) and return True: the caller then
    reports it handled. `arrival redrive ingest` replays it once the cause is fixed."""
    settings = get_pipeline_settings()
    if settings.ingest_dead_letter_queue_url is None or receive_count < settings.ingest_max_receive_count:
        return False
    reason = f"{type(error).__name__}: {error}"
    sqs.send_with_reason(settings.ingest_dead_letter_queue_url, body, reason=reason)
    logger.error("notification dead-lettered after its last delivery", extra={"reason": reason})
    metric("FilesDeadLettered", None)
    return True
