"""Batch predictions from the operator's side: put a file under the inference bucket's
`<model>/input/`, split into parts one batch invocation can score, and wait for what the batch
function writes under `<model>/output/` (docs/batch.md)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.operations import OperationError, outputs_of
from common.adapters import s3
from common.contracts import DataFormat, data_format_of
from common.layout import BATCH_INPUT_FOLDER, batch_input_key, batch_output_key, contract_key

# template.yaml's BatchMaxFileBytes default: the most one invocation scores (docs/batch.md).
DEFAULT_MAX_PART_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    key: str
    version_id: str | None

    def output_key(self, kind: str) -> str:
        """One of the part's results (common/layout.py's batch_output_key): the key below input/,
        without its format, under output/."""
        model, _, rest = self.key.partition(f"/{BATCH_INPUT_FOLDER}/")
        data_format = data_format_of(rest)
        return batch_output_key(model, rest[: -len(data_format.value) - 1] if data_format else rest, kind)


@dataclass(frozen=True)
class Submitted:
    model: str
    bucket: str
    parts: list[Part]


@dataclass(frozen=True)
class PartOutcome:
    part: Part
    manifest: dict[str, Any] | None  # what was scored; None if the part failed
    failure: dict[str, Any] | None  # the failure report; None if it was scored

    @property
    def ok(self) -> bool:
        return self.manifest is not None


def _csv_parts(path: Path, max_bytes: int, scratch: Path) -> Iterator[Path]:
    """The CSV as files of at most max_bytes, each starting with the header line. A row is never cut,
    not even one whose quoted field spans lines (an odd count of quotes opens or closes one)."""
    with path.open("rb") as source:
        header = source.readline()
        if len(header) >= max_bytes:
            raise OperationError(f"{path}: its header line alone is longer than {max_bytes} bytes")
        number, part, size, quoted = 0, None, 0, False
        for line in source:
            if part is None or (not quoted and size + len(line) > max_bytes):
                if part is not None:
                    part.close()
                    yield scratch / f"part-{number:04d}.csv"
                number += 1
                part = (scratch / f"part-{number:04d}.csv").open("wb")
                part.write(header)
                size = len(header)
            part.write(line)
            size += len(line)
            quoted ^= line.count(b'"') % 2 == 1
        if part is not None:
            part.close()
            yield scratch / f"part-{number:04d}.csv"


def _put(path: Path, bucket: str, key: str) -> Part:
    s3.upload(path, bucket, key)
    return Part(key, s3.head_object(bucket, key).version_id)


def submit_batch(
    path: Path, model: str, stack_name: str, max_part_bytes: int = DEFAULT_MAX_PART_BYTES
) -> Submitted:
    """Upload the file under `<model>/input/<its name>`. A CSV larger than one invocation scores is
    split into `<stem>-part-0001.csv`... each with the header; a .csv.gz or Parquet file that large
    is refused, saying how to split it."""
    if not path.is_file():
        raise OperationError(f"{path}: no such file")
    data_format = data_format_of(path.name)
    if data_format is None:
        raise OperationError(f"{path}: batch reads .csv, .csv.gz and .parquet files")
    outputs = outputs_of(stack_name)
    if s3.find_object(outputs["ConfigBucketName"], contract_key(model)) is None:
        raise OperationError(f"model {model!r} has no contract: `arrival contract put` one first")
    bucket = outputs["InferenceBucketName"]
    size = path.stat().st_size
    if size <= max_part_bytes:
        return Submitted(model, bucket, [_put(path, bucket, batch_input_key(model, path.name))])
    if data_format is not DataFormat.csv:
        raise OperationError(
            f"{path}: {size} bytes, more than one batch invocation scores ({max_part_bytes}); "
            "split it into smaller files (decompress a .csv.gz and submit the CSV, which is split for "
            "you; write a Parquet file as several files)"
        )
    stem = path.name[: -len(".csv")]
    with tempfile.TemporaryDirectory(prefix="arrival-batch-") as scratch:
        parts = [
            _put(part, bucket, batch_input_key(model, f"{stem}-{part.stem}.csv"))
            for part in _csv_parts(path, max_part_bytes, Path(scratch))
        ]
    return Submitted(model, bucket, parts)


def _outcome(bucket: str, part: Part) -> PartOutcome | None:
    """The part's manifest or failure report, once one written for this very upload exists."""
    for suffix in ("manifest", "failure"):
        found = s3.get_bytes(bucket, part.output_key(f"{suffix}.json"))
        if found is None:
            continue
        document: dict[str, Any] = json.loads(found[0])
        if document.get("source", {}).get("version_id") != part.version_id:
            continue  # an earlier upload's
        return (
            PartOutcome(part, document, None) if suffix == "manifest" else PartOutcome(part, None, document)
        )
    return None


def wait_batch(submitted: Submitted, timeout: float = 1800) -> list[PartOutcome]:
    """Each part's outcome, in order; TimeoutError if one has none after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    outcomes: list[PartOutcome] = []
    for part in submitted.parts:
        while (outcome := _outcome(submitted.bucket, part)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for s3://{submitted.bucket}/{part.key} after {timeout:.0f} s")
            time.sleep(0.5)
        outcomes.append(outcome)
    return outcomes


OUTPUT_SUFFIXES = (".csv", ".parquet")


def check_output_path(path: Path) -> None:
    """Refuse, before anything is uploaded, a --output that cannot be written."""
    if path.suffix not in OUTPUT_SUFFIXES:
        raise OperationError(f"{path}: --output writes a .csv or a .parquet file")
    if not path.parent.is_dir():
        raise OperationError(f"{path}: no directory {path.parent} to write it in")


def save_predictions(outcomes: list[PartOutcome], path: Path) -> int:
    """Every scored part's predictions, in the parts' order, as one local file (CSV or Parquet, by
    its suffix); the rows written."""
    import pandas as pd

    frames = []
    with tempfile.TemporaryDirectory(prefix="arrival-predictions-") as scratch:
        for number, outcome in enumerate(outcomes):
            if outcome.manifest is None:
                continue
            bucket, key = str(outcome.manifest["predictions"]).removeprefix("s3://").split("/", 1)
            local = Path(scratch) / f"{number}.parquet"
            s3.download(s3.head_object(bucket, key), local)
            frames.append(pd.read_parquet(local))
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if path.suffix == ".parquet":
        predictions.to_parquet(path, index=False)
    else:
        predictions.to_csv(path, index=False)
    return len(predictions)
