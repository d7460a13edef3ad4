"""Batch predictions: a file under ``s3://<inference bucket>/<model>/input/`` is validated row by row
against the model's contract (minus its target), scored by the champion's serving bundle in chunks,
and written back beside it under ``<model>/output/``: the predictions, the rows refused with the rule
each broke, and a manifest. A file that cannot be scored at all gets a failure report there, a
``BatchFailed`` event and a message in the dead-letter queue, never silence.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastparquet
import numpy as np
import pandas as pd
import yaml
from pandera.errors import SchemaErrors
from pydantic import ValidationError

from common import tabular
from common.adapters import events, s3, sqs
from common.bundle_loader import BundleMissingError, BundleRejectedError, LoadedBundle, fetch_bundle
from common.bundles import MISSING_CATEGORY, ServingPointer, pointer_key
from common.contracts import (
    MODEL_NAME,
    CategoricalColumn,
    DataContract,
    DataFormat,
    NumericColumn,
    data_format_of,
    parse_contract,
)
from common.layout import BATCH_INPUT_FOLDER, batch_output_key, contract_key
from common.observability import logger, metric
from common.settings import BatchSettings, get_batch_settings
from common.validation import (
    DatasetRejectedError,
    Rule,
    Violation,
    _rule_of,  # pandera's check names as our rules: one mapping for files and rows
    reject,
    report_text,
    structure_schema,
    values_schema,
)

PREDICTION = "prediction"
PROBABILITY_PREFIX = "probability_"
MODEL_VERSION = "model_version"
# What the rejects file adds to the input's columns (the input's own values are kept as text).
REJECT_ROW, REJECT_RULE, REJECT_COLUMNS, REJECT_DETAIL = "row", "rule", "columns", "detail"
# Snappy: what every Parquet reader reads, and fast; zstd took twice as long to write 1 M scored rows.
_COMPRESSION = "SNAPPY"


class BatchRule(StrEnum):
    """Why a whole file was not scored, besides the contract's own rules (common.validation.Rule)."""

    no_champion = "no_champion"
    bundle_refused = "bundle_refused"
    champion_mismatch = "champion_mismatch"
    out_of_time = "out_of_time"
    error = "error"


class BatchFailedError(Exception):
    """The file as a whole cannot be scored; retrying the same file cannot help."""

    def __init__(
        self, rule: Rule | BatchRule, detail: str, violations: list[Violation] | None = None
    ) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail
        self.violations = violations or []

    @classmethod
    def of(cls, rejected: DatasetRejectedError) -> BatchFailedError:
        return cls(rejected.rule, str(rejected), rejected.violations)


@dataclass(frozen=True)
class BatchObject:
    bucket: str
    key: str  # already URL-decoded
    version_id: str | None = None

    @property
    def uri(self) -> str:
        suffix = f"?versionId={self.version_id}" if self.version_id else ""
        return f"s3://{self.bucket}/{self.key}{suffix}"


@dataclass(frozen=True)
class BatchInput:
    """A key under `<model>/input/`, and where its results go."""

    model: str
    name: str  # the key below input/, without its format suffix
    data_format: DataFormat

    @property
    def predictions_key(self) -> str:
        return batch_output_key(self.model, self.name, "predictions.parquet")

    @property
    def rejects_key(self) -> str:
        return batch_output_key(self.model, self.name, "rejects.parquet")

    @property
    def manifest_key(self) -> str:
        return batch_output_key(self.model, self.name, "manifest.json")

    @property
    def failure_key(self) -> str:
        return batch_output_key(self.model, self.name, "failure.json")


def batch_input(key: str) -> BatchInput | None:
    """The model and name of a key under `<model>/input/` in a format batch reads, else None: the
    function's own outputs (under output/) land in the same bucket and must not be scored again."""
    model, _, rest = key.partition("/")
    folder, _, name = rest.partition("/")
    data_format = data_format_of(key)
    if not MODEL_NAME.match(model) or folder != BATCH_INPUT_FOLDER or data_format is None:
        return None
    stem = name[: -len(data_format.value) - 1]
    if not stem or stem.endswith("/") or any(part in {"", ".", ".."} for part in stem.split("/")):
        return None
    return BatchInput(model, stem, data_format)


@dataclass
class RowsSplit:
    """One chunk, split: the rows that keep the contract (typed), and the others with their rule."""

    valid: pd.DataFrame
    rejected: pd.DataFrame


def feature_contract(contract: DataContract, max_file_bytes: int) -> DataContract:
    """The contract without its target, and the batch function's own size limit. Built unvalidated
    (model_construct): a DataContract insists its target is a column, and this one is only handed to
    the readers and schemas, which read `columns` and `limits` alone."""
    columns = {name: column for name, column in contract.columns.items() if name != contract.target}
    limits = contract.limits.model_copy(update={"max_file_bytes": max_file_bytes})
    return DataContract.model_construct(**{**dict(contract), "columns": columns, "limits": limits})


def _row_failures(errors: SchemaErrors) -> pd.DataFrame:
    """pandera's failure cases as (index, rule, column, value), one per failing cell and rule."""
    cases = errors.failure_cases
    if cases["index"].isna().any():
        # A failure pandera cannot pin to a row (a whole column's): nothing in it can be scored.
        whole = cases[cases["index"].isna()].iloc[0]
        rule = _rule_of(str(whole["check"]))
        raise reject(rule, f"{rule.value.replace('_', ' ')} in column {report_text(whole['column'])}")
    return pd.DataFrame(
        {
            "index": cases["index"].to_numpy(),
            "rule": [_rule_of(str(check)) for check in cases["check"]],
            "column": cases["column"].astype(str).to_numpy(),
            "value": cases["failure_case"].to_numpy(),
        }
    )


def _plainly_valid(frame: pd.DataFrame, contract: DataContract) -> bool:
    """Whether every row of an already typed chunk (numbers as float64) keeps the contract, by a
    vectorised look at the same rules. A shortcut only: pandera judges any chunk this does not pass,
    and its two passes cost more than parsing the chunk (1 M rows x 20 features: 1.7 s)."""
    for name, column in contract.columns.items():
        values = frame[name]
        if isinstance(column, NumericColumn):
            if values.dtype != np.float64:
                return False
            array = values.to_numpy()
            missing = np.isnan(array)
            present = array[~missing]
            if (missing.any() and not column.nullable) or (
                (column.min is not None and (present < column.min).any())
                or (column.max is not None and (present > column.max).any())
            ):
                return False
        else:
            missing = values.isna()
            if (missing.any() and not column.nullable) or not values[~missing].isin(column.categories).all():
                return False
    return True


def split_rows(frame: pd.DataFrame, contract: DataContract, first_row: int) -> RowsSplit:
    """Types the chunk as the contract says, with pandera's two passes (structure, then values), and
    sets aside each row that breaks a rule instead of refusing the chunk. `first_row` is the file's
    row number (1-based, header excluded) of the chunk's first row."""
    frame = frame.reset_index(drop=True)
    if set(frame.columns) == set(contract.columns) and _plainly_valid(frame, contract):
        return RowsSplit(
            frame[list(contract.columns)], _rejects_frame(frame.iloc[:0], pd.DataFrame(), first_row)
        )
    failures: list[pd.DataFrame] = []
    remaining = frame
    for schema in (structure_schema(contract), values_schema(contract)):
        try:
            remaining = schema.validate(remaining, lazy=True)
        except SchemaErrors as errors:
            found = _row_failures(errors)
            failures.append(found)
            bad = set(found["index"].tolist())
            remaining = schema.validate(remaining[[index not in bad for index in remaining.index]])
    valid = remaining[list(contract.columns)]
    if not failures:
        return RowsSplit(valid, _rejects_frame(frame.iloc[:0], pd.DataFrame(), first_row))
    return RowsSplit(valid, _rejects_frame(frame, pd.concat(failures), first_row))


def _rejects_frame(frame: pd.DataFrame, failures: pd.DataFrame, first_row: int) -> pd.DataFrame:
    """The rejected rows as they came (text), each with its row number, first rule (in Rule's
    order, as a quarantine report leads with it), every column at fault and what was wrong."""
    extra: dict[str, Any] = {REJECT_ROW: [], REJECT_RULE: [], REJECT_COLUMNS: [], REJECT_DETAIL: []}
    if failures.empty:
        return frame.iloc[:0].astype(object).assign(**extra).astype({REJECT_ROW: "int64"})
    order = {rule: position for position, rule in enumerate(Rule)}
    failures = failures.assign(
        order=failures["rule"].map(order),
        text=[
            f"{report_text(column)}: {report_text(value)} ({rule})"
            for column, value, rule in zip(
                failures["column"], failures["value"], failures["rule"], strict=True
            )
        ],
    ).sort_values(["index", "order"], kind="stable")
    by_row = failures.groupby("index", sort=True)
    rows = np.asarray(by_row.size().index, dtype="int64")
    extra = {
        REJECT_ROW: rows + first_row,
        REJECT_RULE: [str(rule) for rule in by_row["rule"].first()],
        REJECT_COLUMNS: by_row["column"].agg(lambda names: ", ".join(dict.fromkeys(names))).to_numpy(),
        REJECT_DETAIL: by_row["text"].agg("; ".join).to_numpy(),
    }
    text = frame.iloc[rows].astype(object)
    text = text.where(text.notna(), None).map(lambda value: None if value is None else str(value))
    return text.reset_index(drop=True).assign(**extra)


def model_inputs(model: LoadedBundle, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The typed chunk as the bundle's ONNX inputs, column by column: the tensors the bundle's
    InputBuilder makes from records (numeric float32 with NaN for missing, categorical strings with
    MISSING_CATEGORY), without building a dict per row, which cost more than the model itself."""
    contract = model.manifest.contract
    inputs: dict[str, np.ndarray] = {}
    for name in contract.features:
        if isinstance(contract.columns[name], CategoricalColumn):
            values = frame[name].to_numpy(dtype=object)
            inputs[name] = np.where(pd.isna(values), MISSING_CATEGORY, values).reshape(-1, 1)
        else:
            inputs[name] = frame[name].to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
    return inputs


def predict_frame(model: LoadedBundle, frame: pd.DataFrame) -> pd.DataFrame:
    """The chunk with its prediction, the probability of each class (classification) and the version."""
    outputs = model.session.run(model.output_names, model_inputs(model, frame))
    scored = {PREDICTION: np.asarray(outputs[0]).reshape(-1)}
    if model.class_names is not None:
        # As LoadedBundle.predict: float32 rounding can put a sure class at 1.0000001.
        probabilities = np.clip(np.asarray(outputs[1]), 0.0, 1.0)
        for position, name in enumerate(model.class_names):
            scored[f"{PROBABILITY_PREFIX}{name}"] = probabilities[:, position]
    result = frame.reset_index(drop=True).assign(**scored)
    result[MODEL_VERSION] = model.version
    return result


class ParquetWriter:
    """Chunks appended to one Parquet file, a row group each, the schema fixed by the first chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._file: Any = None
        self._dtypes: dict[str, Any] = {}

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self._file is None:
            # Text columns as UTF-8 even when a chunk holds only nulls in one of them.
            self._dtypes = {
                str(name): ("str" if frame[name].dtype == object else frame[name].dtype) for name in frame
            }
            fastparquet.write(
                str(self.path),
                frame.iloc[:0].astype(self._dtypes),
                compression=_COMPRESSION,
                write_index=False,
            )
            self._file = fastparquet.ParquetFile(str(self.path))
        # No column statistics: nobody filters predictions by range, and they cost a fifth of the write.
        self._file.write_row_groups(frame.astype(self._dtypes), compression=_COMPRESSION, stats=False)
        self.rows += len(frame)


@dataclass
class Timings:
    load_seconds: float = 0.0  # the contract and the champion's bundle
    download_seconds: float = 0.0
    score_seconds: float = 0.0
    upload_seconds: float = 0.0

    def as_dict(self, total: float, rows: int) -> dict[str, float]:
        return {
            "load_seconds": round(self.load_seconds, 3),
            "download_seconds": round(self.download_seconds, 3),
            "score_seconds": round(self.score_seconds, 3),
            "upload_seconds": round(self.upload_seconds, 3),
            "total_seconds": round(total, 3),
            "rows_per_second": round(rows / total, 1) if total > 0 else 0.0,
        }


@dataclass
class Scored:
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rejects_by_rule: dict[str, int] = field(default_factory=dict)
    rejected_columns: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    model: str
    version: str
    predictions: str | None  # s3:// URI, None when no row was valid
    rejects: str | None
    manifest: str
    rows_scored: int
    rows_rejected: int
    seconds: float


class Deadline:
    """Stops scoring while the invocation still has time to say why, and how to split the file:
    Lambda would otherwise kill it mid-file, and SQS deliver the file again, to time out again."""

    def __init__(self, seconds_left: Callable[[], float], margin: float) -> None:
        self.seconds_left = seconds_left
        self.margin = margin
        self.longest_chunk = 0.0

    def check(self, rows_done: int, seconds_spent: float) -> None:
        left = self.seconds_left()
        if left >= self.margin + 2 * self.longest_chunk:
            return
        rate = rows_done / seconds_spent if seconds_spent > 0 else 0.0
        budget = seconds_spent + left - self.margin
        advice = (
            f"split it into files of at most {int(rate * budget * 0.8):,} rows (this function scored "
            f"{rate:,.0f} rows/s), each with the header line, and upload each under input/"
            if rate
            else "split it into smaller files"
        )
        raise BatchFailedError(
            BatchRule.out_of_time,
            f"the function's time ran out after {rows_done:,} rows in {seconds_spent:.0f} s; {advice}",
        )


def score_file(
    model: LoadedBundle,
    contract: DataContract,
    source: Path,
    data_format: DataFormat,
    scratch: Path,
    chunk_rows: int,
    deadline: Deadline,
) -> Scored:
    """Stream the file chunk by chunk: each chunk's valid rows scored and appended to the
    predictions file, the others to the rejects file. Memory holds one chunk whatever the size. A
    CSV is first read with its numbers parsed as numbers; one whose numeric columns hold text is
    read again as text, at worst twice the time, which only such a file pays."""
    started = time.monotonic()
    if data_format is not DataFormat.parquet:
        try:
            return _score_chunks(
                model, contract, source, data_format, scratch, chunk_rows, deadline, started, True
            )
        except tabular.TextInNumericColumnError as error:
            logger.info(
                "text in a numeric column: reading the file again as text", extra={"reason": str(error)}
            )
    return _score_chunks(model, contract, source, data_format, scratch, chunk_rows, deadline, started, False)


def _score_chunks(
    model: LoadedBundle,
    contract: DataContract,
    source: Path,
    data_format: DataFormat,
    scratch: Path,
    chunk_rows: int,
    deadline: Deadline,
    started: float,
    fast: bool,
) -> Scored:
    predictions = ParquetWriter(scratch / "predictions.parquet")
    rejects = ParquetWriter(scratch / "rejects.parquet")
    scored = Scored()
    with source.open("rb") as stream:
        for chunk in tabular.chunks(source, stream, data_format, contract, chunk_rows, numbers=fast):
            chunk_started = time.monotonic()
            split = split_rows(tabular.strip_whitespace(chunk), contract, scored.rows_read + 1)
            scored.rows_read += len(chunk)
            if len(split.valid):
                predictions.write(predict_frame(model, split.valid))
            rejects.write(split.rejected)
            _count_rejects(scored, split.rejected)
            deadline.longest_chunk = max(deadline.longest_chunk, time.monotonic() - chunk_started)
            deadline.check(scored.rows_read, time.monotonic() - started)
    if scored.rows_read == 0:
        raise reject(Rule.header_only, "the file has a header but no rows")
    scored.rows_scored, scored.rows_rejected = predictions.rows, rejects.rows
    return scored


def _count_rejects(scored: Scored, rejected: pd.DataFrame) -> None:
    for rule, count in rejected[REJECT_RULE].value_counts().items():
        scored.rejects_by_rule[str(rule)] = scored.rejects_by_rule.get(str(rule), 0) + int(count)
        columns = rejected.loc[rejected[REJECT_RULE] == rule, REJECT_COLUMNS]
        scored.rejected_columns.setdefault(str(rule), set()).update(
            name for names in columns for name in names.split(", ")
        )


def load_contract(settings: BatchSettings, model: str) -> DataContract:
    where = f"s3://{settings.config_bucket}/{contract_key(model)}"
    found = s3.get_bytes(settings.config_bucket, contract_key(model))
    if found is None:
        raise BatchFailedError(Rule.no_contract, f"no data contract for model {model!r} (expected {where})")
    try:
        contract = parse_contract(found[0])
    except (yaml.YAMLError, ValidationError) as error:
        raise BatchFailedError(
            Rule.no_contract,
            f"the contract at {where} is not valid ({error}); fix it with `arrival contract put`",
        ) from error
    if contract.model != model:
        raise BatchFailedError(Rule.no_contract, f"the contract at {where} declares model {contract.model!r}")
    return contract


@lru_cache(maxsize=4)
def _loaded(bucket: str, pointer: ServingPointer) -> LoadedBundle:
    """A bundle is immutable under its version's key: a warm function loads (and proves) it once."""
    return fetch_bundle(bucket, pointer)


def load_champion(settings: BatchSettings, model: str) -> LoadedBundle:
    """The bundle the serving pointer names: the version the API answers with right now."""
    found = s3.get_bytes(settings.models_bucket, pointer_key(model))
    if found is None:
        raise BatchFailedError(
            BatchRule.no_champion,
            f"model {model!r} has no champion to score with (no s3://{settings.models_bucket}/"
            f"{pointer_key(model)}); upload training data first, then replay this file with "
            "`arrival redrive batch`",
        )
    # A missing bundle fails the file as a refused one does: `arrival redrive batch` replays it.
    try:
        pointer = ServingPointer.model_validate_json(found[0])
        return _loaded(settings.models_bucket, pointer)
    except (BundleRejectedError, BundleMissingError, ValidationError) as error:
        raise BatchFailedError(
            BatchRule.bundle_refused, f"the champion's bundle was refused: {error}"
        ) from error


def _check_before_reading(
    settings: BatchSettings, info: s3.ObjectInfo, target: BatchInput, contract: DataContract
) -> None:
    if info.size == 0:
        raise BatchFailedError(Rule.empty_file, "the file is empty (0 bytes)")
    if target.data_format not in contract.limits.formats:
        allowed = ", ".join(fmt.value for fmt in contract.limits.formats)
        raise BatchFailedError(
            Rule.unsupported_format,
            f"{target.data_format.value} is not accepted; the contract allows {allowed}",
        )
    if info.size > settings.max_file_bytes:
        parts = -(-info.size // settings.max_file_bytes)
        raise BatchFailedError(
            Rule.file_too_large,
            f"{info.size:,} bytes; one batch invocation takes at most {settings.max_file_bytes:,} "
            f"(BATCH_MAX_FILE_BYTES, docs/batch.md): split it into {parts} or more files, each with "
            "the header line (`cli.batch.submit_batch` splits a CSV so), and upload each under input/",
        )


def _missing_features(model: LoadedBundle, contract: DataContract) -> list[str]:
    return [
        name
        for name in model.manifest.contract.features
        if name not in contract.columns or name == contract.target
    ]


def _summary(scored: Scored) -> list[dict[str, Any]]:
    """The rejected rows by rule, in a quarantine report's violation shape."""
    return [
        Violation(
            Rule(rule),
            f"{count} rows not scored: {rule.replace('_', ' ')}",
            sorted(scored.rejected_columns.get(rule, set())),
            count,
        ).as_dict()
        for rule, count in sorted(
            scored.rejects_by_rule.items(), key=lambda item: list(Rule).index(Rule(item[0]))
        )
    ]


def score_object(source: BatchObject, seconds_left: Callable[[], float]) -> BatchResult | None:
    """Score one file. None if the key is not a batch input (the function's own outputs among
    them) or the object is gone; BatchFailedError if the file as a whole cannot be scored."""
    target = batch_input(source.key)
    if target is None:
        logger.info("ignored: not a file under <model>/input/", extra={"key": source.key})
        return None
    settings = get_batch_settings()
    info = s3.find_object(source.bucket, source.key, source.version_id)
    if info is None:
        logger.warning("the object no longer exists; nothing to score", extra={"key": source.key})
        return None
    if _already_scored(info, target):
        logger.info("this version of the file is already scored; nothing to do", extra={"key": source.key})
        return None
    started = time.monotonic()
    contract = load_contract(settings, target.model)
    _check_before_reading(settings, info, target, contract)
    model = load_champion(settings, target.model)
    if missing := _missing_features(model, contract):
        raise BatchFailedError(
            BatchRule.champion_mismatch,
            f"the champion (version {model.version}) takes features the contract no longer lists: "
            f"{', '.join(missing)}",
        )
    features = feature_contract(contract, settings.max_file_bytes)
    scratch = settings.scratch_dir / f"batch-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    timings = Timings(load_seconds=time.monotonic() - started)
    try:
        downloading = time.monotonic()
        s3.download(info, scratch / "source")
        timings.download_seconds = time.monotonic() - downloading
        scoring = time.monotonic()
        try:
            tabular.check_inflated_size(scratch / "source", target.data_format, settings.max_file_bytes)
            scored = score_file(
                model,
                features,
                scratch / "source",
                target.data_format,
                scratch,
                settings.chunk_rows,
                Deadline(seconds_left, settings.time_margin_seconds),
            )
        except DatasetRejectedError as rejected:
            raise BatchFailedError.of(rejected) from None
        timings.score_seconds = time.monotonic() - scoring
        uploading = time.monotonic()
        predictions = _upload(
            scratch / "predictions.parquet", source.bucket, target.predictions_key, scored.rows_scored
        )
        rejects = _upload(
            scratch / "rejects.parquet", source.bucket, target.rejects_key, scored.rows_rejected
        )
        timings.upload_seconds = time.monotonic() - uploading
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    seconds = time.monotonic() - started
    manifest = {
        "model": target.model,
        "version": model.version,
        "source": {
            "bucket": info.bucket,
            "key": info.key,
            "version_id": info.version_id,
            "etag": info.etag,
            "size": info.size,
        },
        "predictions": predictions,
        "rejects": rejects,
        "rows": {"read": scored.rows_read, "scored": scored.rows_scored, "rejected": scored.rows_rejected},
        "violations": _summary(scored),
        "timings": timings.as_dict(seconds, scored.rows_read),
        "contract_hash": contract.content_hash,
        "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    s3.put_json(source.bucket, target.manifest_key, manifest)
    result = BatchResult(
        target.model,
        model.version,
        predictions,
        rejects,
        f"s3://{source.bucket}/{target.manifest_key}",
        scored.rows_scored,
        scored.rows_rejected,
        round(seconds, 3),
    )
    logger.info(
        "batch scored",
        extra={
            "model": target.model,
            "version": model.version,
            "rows_scored": scored.rows_scored,
            "rows_rejected": scored.rows_rejected,
            "seconds": result.seconds,
        },
    )
    metric("BatchRowsScored", target.model, scored.rows_scored)
    metric("BatchRowsRejected", target.model, scored.rows_rejected)
    events.publish(
        settings.event_bus_name,
        "BatchCompleted",
        {
            "name": result.model,
            "version": result.version,
            "input": BatchObject(info.bucket, info.key, info.version_id).uri,
            "output": result.predictions,
            "rejects": result.rejects,
            "manifest": result.manifest,
            "rows_scored": result.rows_scored,
            "rows_rejected": result.rows_rejected,
            "seconds": result.seconds,
        },
    )
    return result


def _already_scored(info: s3.ObjectInfo, target: BatchInput) -> bool:
    """S3 may notify twice: the manifest, written last, records which version of the file it
    scored, so it serves as the idempotency record (powertools' would be a second object per file).
    A failure report does not count: a file dead-lettered for want of a champion is replayed to be
    scored once there is one."""
    found = s3.get_bytes(info.bucket, target.manifest_key)
    if found is None:
        return False
    scored = json.loads(found[0]).get("source", {})
    return bool(info.version_id) and (scored.get("version_id"), scored.get("etag")) == (
        info.version_id,
        info.etag,
    )


def _upload(path: Path, bucket: str, key: str, rows: int) -> str | None:
    if rows == 0:
        return None
    s3.upload(path, bucket, key)
    return f"s3://{bucket}/{key}"


def report_failure(source: BatchObject, failed: BatchFailedError, body: str) -> None:
    """Say it everywhere someone would look: a report beside where the output would have been, a
    BatchFailed event, and the notification in the dead-letter queue with the reason, whence
    `arrival redrive batch` replays it once the cause is fixed."""
    settings = get_batch_settings()
    target = batch_input(source.key)
    model = target.model if target else None
    report_uri = None
    report = {
        "source": {"bucket": source.bucket, "key": source.key, "version_id": source.version_id},
        "model": model,
        "rule": str(failed.rule),
        "reason": failed.detail,
        "violations": [violation.as_dict() for violation in failed.violations],
        "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    if target is not None:
        s3.put_json(source.bucket, target.failure_key, report)
        report_uri = f"s3://{source.bucket}/{target.failure_key}"
    reason = f"{failed.rule}: {failed.detail}"
    logger.error("batch failed", extra={"key": source.key, "rule": str(failed.rule), "reason": failed.detail})
    metric("BatchFilesFailed", model)
    events.publish(
        settings.event_bus_name,
        "BatchFailed",
        {
            "name": model,
            "input": source.uri,
            "reason": reason,
            "rule": str(failed.rule),
            "report": report_uri,
        },
    )
    if settings.dead_letter_queue_url:
        sqs.send_with_reason(settings.dead_letter_queue_url, body, reason=reason)


def score_notification(
    sources: list[BatchObject], body: str, receive_count: int, seconds_left: Callable[[], float]
) -> None:
    """Every file one S3 notification names. A file that fails as a whole is reported at once; any
    other error is raised for SQS to deliver the notification again, and reported on its last delivery."""
    settings = get_batch_settings()
    for source in sources:
        logger.set_correlation_id(source.uri)
        try:
            score_object(source, seconds_left)
        except BatchFailedError as failed:
            report_failure(source, failed, body)
        except Exception as error:
            if receive_count < settings.max_receive_count:
                raise
            report_failure(
                source, BatchFailedError(BatchRule.error, f"{type(error).__name__}: {error}"), body
            )
