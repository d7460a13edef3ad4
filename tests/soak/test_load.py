"""Load: 200 uploads in one minute across five models, some bad and some sent twice. Every file is
accounted for (accepted, quarantined or duplicate), no S3 event reaches the dead-letter queue, training
is coalesced, no training job is lost, and each model ends with exactly one version per settled list."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest

from common.layout import accepted_list_hash
from tests import datasets
from tests.e2e.conftest import Chain
from tests.helpers import eventually
from tests.soak import figures

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

FILES = int(os.environ.get("ARRIVAL_SOAK_FILES", "200"))
SECONDS = float(os.environ.get("ARRIVAL_SOAK_SECONDS", "60"))
BAD_SHARE = 0.12
DUPLICATE_SHARE = 0.05
UPLOAD_THREADS = 8
# Three classification models and two regression models, uploaded to in turn.
CONTRACTS = ("iris", "house-prices", "iris", "house-prices", "iris")
BAD_KINDS = ("wrong_column", "out_of_range", "empty")
EXPECTED_RULES = {
    "wrong_column": {"missing_columns", "unexpected_columns"},
    "out_of_range": {"out_of_range"},
    "empty": {"empty_file"},
}
# A column each contract requires, renamed in a bad file; and one with a maximum, broken in another.
RENAMED = {"iris": ("petal_width", "petal_wdth"), "house-prices": ("district", "distrikt")}
TOO_LARGE = {"iris": ("sepal_length", 99.0), "house-prices": ("rooms", 99.0)}


@dataclass(frozen=True)
class Upload:
    index: int
    model: str
    key: str
    body: bytes
    kind: str  # "good", "duplicate", or one of BAD_KINDS

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def bad(self) -> bool:
        return self.kind in BAD_KINDS


def _frame(contract: str, rows: int, seed: int) -> pd.DataFrame:
    if contract == "iris":
        return datasets.noisy_iris_frame(rows, seed)
    return datasets.house_frame(rows, seed)


def _encoded(frame: pd.DataFrame, suffix: str) -> bytes:
    if suffix == "parquet":
        return datasets.to_parquet(frame)
    return datasets.to_csv_gz(frame) if suffix == "csv.gz" else datasets.to_csv(frame)


def _bad_body(kind: str, contract: str, seed: int) -> bytes:
    if kind == "empty":
        return b""
    frame = _frame(contract, 80, seed)
    if kind == "wrong_column":
        return datasets.to_csv(frame.rename(columns=dict([RENAMED[contract]])))
    column, value = TOO_LARGE[contract]
    frame.loc[0, column] = value
    return datasets.to_csv(frame)


def plan_uploads(models: dict[str, str], files: int, seed: int = 7) -> list[Upload]:
    """`files` uploads over the models in turn: the first of each model is good, then a fixed share
    is bad and a fixed share repeats the bytes of an earlier good file of the same model."""
    rng = random.Random(seed)
    names = list(models)
    later = list(range(len(names), files))
    special = rng.sample(later, round(files * BAD_SHARE) + round(files * DUPLICATE_SHARE))
    bad = set(special[: round(files * BAD_SHARE)])
    duplicated = set(special[round(files * BAD_SHARE) :])
    good_so_far: dict[str, list[Upload]] = {name: [] for name in names}
    uploads: list[Upload] = []
    for index in range(files):
        model = names[index % len(names)]
        contract = models[model]
        if index in duplicated:
            original = rng.choice(good_so_far[model])
            key = f"{model}/copy-{index:03d}-of-{original.index:03d}.{original.key.split('.', 1)[1]}"
            uploads.append(Upload(index, model, key, original.body, "duplicate"))
        elif index in bad:
            kind = BAD_KINDS[len([u for u in uploads if u.bad]) % len(BAD_KINDS)]
            uploads.append(
                Upload(index, model, f"{model}/bad-{index:03d}.csv", _bad_body(kind, contract, index), kind)
            )
        else:
            suffix = rng.choice(["csv", "csv", "csv", "csv.gz", "parquet"])
            body = _encoded(_frame(contract, rng.randint(60, 160), 10_000 + index), suffix)
            upload = Upload(index, model, f"{model}/part-{index:03d}.{suffix}", body, "good")
            uploads.append(upload)
            good_so_far[model].append(upload)
    return uploads


def upload_at_steady_pace(chain: Chain, uploads: list[Upload], seconds: float) -> dict[str, float]:
    """Each file goes out at its slot of an even schedule over `seconds`, from a pool of threads, so a
    slow upload does not push the others back. Returns when each upload returned (epoch seconds)."""
    bucket = chain.outputs["RawBucketName"]

    def put(upload: Upload) -> tuple[str, float]:
        chain.s3.put_object(Bucket=bucket, Key=upload.key, Body=upload.body)
        return upload.key, time.time()

    interval = seconds / len(uploads)
    started = time.monotonic()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        futures = []
        for upload in uploads:
            # Pacing, not waiting for a condition: the suite sends at a fixed rate.
            time.sleep(max(0.0, started + upload.index * interval - time.monotonic()))
            futures.append(pool.submit(put, upload))
        return dict(future.result() for future in futures)


@dataclass
class Ledger:
    """What the buckets say became of the files."""

    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # by model
    accepted_keys: set[str] = field(default_factory=set)
    accepted_hashes: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, hash) -> key
    quarantined_keys: set[str] = field(default_factory=set)

    def outcome(self, upload: Upload) -> str | None:
        if upload.key in self.accepted_keys:
            return "accepted"
        if upload.key in self.quarantined_keys:
            return "quarantined"
        if self.accepted_hashes.get((upload.model, upload.content_hash)) not in (None, upload.key):
            return "duplicate"
        return None


def take_ledger(chain: Chain, models: Iterable[str]) -> Ledger:
    ledger = Ledger()
    processed, quarantine = chain.outputs["ProcessedBucketName"], chain.outputs["QuarantineBucketName"]
    pages = chain.s3.get_paginator("list_objects_v2")
    for model in models:
        try:
            body = chain.s3.get_object(Bucket=processed, Key=f"{model}/accepted.json")["Body"].read()
        except chain.s3.exceptions.NoSuchKey:
            body = json.dumps({"model": model, "datasets": []}).encode()
        document = json.loads(body)
        ledger.accepted[model] = document
        for entry in document["datasets"]:
            ledger.accepted_keys.add(entry["source"]["key"])
            ledger.accepted_hashes[(model, entry["content_hash"])] = entry["source"]["key"]
        for page in pages.paginate(Bucket=quarantine, Prefix=f"{model}/"):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".report.json"):
                    ledger.quarantined_keys.add(item["Key"].removesuffix(".report.json"))
    return ledger


def ingest_log(chain: Chain, since: float) -> list[dict[str, Any]]:
    logs = chain.cloud.client("logs")
    pages = logs.get_paginator("filter_log_events").paginate(
        logGroupName=f"/aws/lambda/{chain.outputs['IngestFunctionName']}", startTime=int(since * 1000)
    )
    return [event for page in pages for event in page["events"]]


def keys_logged_as_duplicates(log: list[dict[str, Any]], raw_bucket: str) -> set[str]:
    """The keys the ingest function logged "duplicate dataset ignored" for: a file counted as a
    duplicate because its bytes were accepted under another key was itself seen, not lost."""
    keys = set()
    for event in log:
        line = json.loads(event["message"]) if event["message"].startswith("{") else {}
        if line.get("message") == "duplicate dataset ignored":
            keys.add(str(line["correlation_id"]).removeprefix(f"s3://{raw_bucket}/"))
    return keys


REPORT_LINE = re.compile(r"REPORT RequestId: \S+\tDuration: ([\d.]+) ms")


@dataclass(frozen=True)
class Invocations:
    """The ingest function's invocations, from its REPORT lines: how long each took, and how many ran
    at once (each ends when its REPORT line is logged and started its duration before)."""

    durations: list[float]
    cold_starts: int
    most_at_once: int
    mean_at_once: float

    @classmethod
    def from_log(cls, log: list[dict[str, Any]]) -> Invocations:
        spans: list[tuple[float, float]] = []
        cold = 0
        for event in log:
            if found := REPORT_LINE.search(event["message"]):
                end, duration = event["timestamp"] / 1000, float(found.group(1)) / 1000
                spans.append((end - duration, end))
                cold += "Init Duration" in event["message"]
        moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        running = most = 0
        for _, step in moments:
            running += step
            most = max(most, running)
        busy = max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0
        durations = [end - start for start, end in spans]
        return cls(durations, cold, most, sum(durations) / busy if busy else 0.0)

    def row(self) -> str:
        if not self.durations:
            return "-"
        return (
            f"{len(self.durations)} invocations ({self.cold_starts} cold); duration median "
            f"{figures.median(self.durations):.2f} s, p90 {figures.percentile(self.durations, 0.9):.2f} s, "
            f"max {max(self.durations):.2f} s; running at once: at most {self.most_at_once}, "
            f"{self.mean_at_once:.1f} on average from the first to the last"
        )

    def note(self) -> str:
        if self.most_at_once != 1:
            return ""
        return (
            "The ingest function ran one invocation at a time, whatever the template's "
            "MaximumConcurrency (5): LocalStack's SQS event source mapping polls from one thread and "
            "invokes the function synchronously (the local cloud sets "
            "`LAMBDA_EVENT_SOURCE_MAPPING_POLL_INTERVAL_SEC` to 0.05 s, from LocalStack's 1 s, so batches "
            "follow each other at once). On AWS the mapping scales up to MaximumConcurrency invocations "
            "at once."
        )


def queue_depth(chain: Chain, output: str) -> int:
    attributes = chain.cloud.client("sqs").get_queue_attributes(
        QueueUrl=chain.outputs[output],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def settled_version(chain: Chain, model: str, final_list: dict[str, Any]) -> Any | None:
    """The model's newest version, if it was trained on the final list and its decision is made."""
    versions = chain.versions(model)
    if not versions:
        return None
    newest = versions[-1]
    decided = "promotion" in newest.tags or "rejected" in newest.tags
    on_final_list = newest.tags.get("accepted_list_hash") == accepted_list_hash(final_list)
    return newest if decided and on_final_list else None


def superseded_runs(chain: Chain, model: str) -> int:
    experiments = chain.mlflow.search_experiments(filter_string=f"name = '{model}'")
    if not experiments:
        return 0
    runs = chain.mlflow.search_runs([experiment.experiment_id for experiment in experiments])
    return sum(1 for run in runs if "superseded" in run.data.tags)


@dataclass
class LoadReport:
    """The suite's figures, filled in as it goes and recorded even when it fails half-way."""

    models: dict[str, str]
    uploads: list[Upload]
    ledger: Ledger = field(default_factory=Ledger)
    uploaded_at: dict[str, float] = field(default_factory=dict)  # by key, epoch seconds
    upload_seconds: float | None = None
    last_upload: float | None = None
    accounted_at: float | None = None
    ingest_dead_letters: int | None = None
    ingest: Invocations | None = None
    unsettled: list[str] = field(default_factory=list)  # models whose final list has no version yet
    last_version_at: float | None = None
    training_dead_letters: int | None = None
    failure: str | None = None

    def outcomes(self) -> dict[str, str | None]:
        return {upload.key: self.ledger.outcome(upload) for upload in self.uploads}

    def lost(self) -> list[str]:
        return sorted(key for key, outcome in self.outcomes().items() if outcome is None)

    def recorded(self, chain: Chain) -> AbstractContextManager[None]:
        return figures.recorded(SECTION, self, lambda: self.render(chain))

    def render(self, chain: Chain) -> str:
        sent = Counter("bad" if upload.bad else upload.kind for upload in self.uploads)
        outcomes = self.outcomes()
        counts = Counter(outcome or "lost" for outcome in outcomes.values())
        lost_messages = counts["lost"] + len(self.unsettled)
        summary = [
            ("files sent", len(self.uploads)),
            ("accepted", counts["accepted"]),
            ("quarantined", counts["quarantined"]),
            ("duplicate", counts["duplicate"]),
            ("lost (not accounted for)", counts["lost"]),
            ("upload -> accepted, median / max", self._acceptance_delays()),
            ("ingest dead-letter queue", figures.optional(self.ingest_dead_letters)),
            ("ingest function (its REPORT lines)", self.ingest.row() if self.ingest else "-"),
            ("last upload -> every file accounted for", _seconds(self.last_upload, self.accounted_at)),
            ("last upload -> last version registered", _seconds(self.last_upload, self.last_version_at)),
            ("training dead-letter queue", figures.optional(self.training_dead_letters)),
            ("messages lost (files not accounted for + final lists never trained)", lost_messages),
        ]
        per_model = [
            self._model_row(chain, model, contract, outcomes) for model, contract in self.models.items()
        ]
        verdict = f"**This run failed:** {self.failure}\n\n" if self.failure else ""
        return (
            f"{verdict}{len(self.uploads)} files to {len(self.models)} models, uploaded in "
            f"{figures.optional(self.upload_seconds, '.1f')} s (an even schedule over {SECONDS:.0f} s, "
            f"{UPLOAD_THREADS} upload threads). Planned: {sent['good']} good files (60-160 rows, csv, csv.gz "
            f"or parquet), {sent['bad']} bad (a renamed column, a value over its maximum, or no bytes), "
            f"{sent['duplicate']} exact copies of an earlier good file of the same model under a new key. "
            "A file is *accepted* if its key is in its model's `accepted.json`, *quarantined* if the "
            "quarantine bucket has its report, *duplicate* if its bytes were accepted under another key "
            "(and the ingest function logged `duplicate dataset ignored` for its own key). "
            "Every model's newest version is then awaited until its `accepted_list_hash` tag is the hash of "
            "the model's final list and its decision is made.\n\n"
            + figures.table(("figure", "value"), summary)
            + (f"\n\n{self.ingest.note()}" if self.ingest and self.ingest.note() else "")
            + "\n\n"
            + figures.table(
                (
                    "model",
                    "contract",
                    "files",
                    "accepted",
                    "quarantined",
                    "duplicate",
                    "versions",
                    "promoted",
                    "trainings superseded",
                ),
                per_model,
            )
        )

    def _acceptance_delays(self) -> str:
        delays = [
            entry["accepted_at"] - self.uploaded_at[entry["source"]["key"]]
            for document in self.ledger.accepted.values()
            for entry in document["datasets"]
            if entry["source"]["key"] in self.uploaded_at
        ]
        return f"{figures.median(delays):.1f} s / {max(delays):.1f} s" if delays else "-"

    def _model_row(
        self, chain: Chain, model: str, contract: str, outcomes: dict[str, str | None]
    ) -> tuple[object, ...]:
        mine = [outcomes[upload.key] for upload in self.uploads if upload.model == model]
        versions = chain.versions(model)
        promoted = sum(1 for version in versions if "promotion" in version.tags)
        return (
            model,
            contract,
            len(mine),
            mine.count("accepted"),
            mine.count("quarantined"),
            mine.count("duplicate"),
            len(versions),
            promoted,
            superseded_runs(chain, model),
        )


SECTION = "200 uploads in one minute, across 5 models"


def _seconds(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{end - start:.1f} s"


def test_two_hundred_uploads_in_a_minute_are_all_accounted_for_and_training_is_coalesced(
    chain: Chain, unique: str
) -> None:
    # GIVEN five models, three classification and two regression contracts
    models = {f"load{index}-{unique}": contract for index, contract in enumerate(CONTRACTS)}
    for model, contract in models.items():
        chain.put_contract(model, datasets.contract_yaml(contract, model))
    report = LoadReport(models, plan_uploads(models, FILES))
    with report.recorded(chain):
        _uploads_are_accounted_for(chain, report)
        _training_is_coalesced_and_complete(chain, report)


def _uploads_are_accounted_for(chain: Chain, report: LoadReport) -> None:
    dead_letters_before = queue_depth(chain, "IngestDeadLetterQueueUrl")

    # WHEN the files are uploaded at a steady pace
    started = time.time()
    report.uploaded_at = upload_at_steady_pace(chain, report.uploads, SECONDS)
    report.last_upload = max(report.uploaded_at.values())
    report.upload_seconds = report.last_upload - started

    # THEN every file is accounted for once no S3 event waits for or is inside the ingest function
    def accounted() -> bool:
        report.ledger = take_ledger(chain, report.models)
        return not report.lost() and queue_depth(chain, "IngestQueueUrl") == 0

    eventually(accounted, 600, interval=2, what="every file accounted for")
    report.accounted_at = time.time()
    report.ingest_dead_letters = queue_depth(chain, "IngestDeadLetterQueueUrl") - dead_letters_before
    assert report.ingest_dead_letters == 0
    _assert_outcomes_match_what_was_sent(chain, report.uploads, report.outcomes(), report.ledger)
    duplicates = {key for key, outcome in report.outcomes().items() if outcome == "duplicate"}
    raw_bucket = chain.outputs["RawBucketName"]
    eventually(
        lambda: duplicates <= keys_logged_as_duplicates(ingest_log(chain, started), raw_bucket),
        60,
        interval=2,
        what="the ingest function's log line for every duplicate",
    )
    report.ingest = Invocations.from_log(ingest_log(chain, started))


def _training_is_coalesced_and_complete(chain: Chain, report: LoadReport) -> None:
    # THEN every model's newest version was trained on its final list
    def all_settled() -> dict[str, Any] | None:
        found = {
            model: settled_version(chain, model, report.ledger.accepted[model]) for model in report.models
        }
        report.unsettled = [model for model, version in found.items() if version is None]
        return None if report.unsettled else found

    final_versions = eventually(all_settled, 600, interval=2, what="a version on every model's final list")
    report.last_version_at = max(version.creation_timestamp / 1000 for version in final_versions.values())

    # AND no job is left over or failed, and each settled list has exactly one version
    assert eventually(
        lambda: queue_depth(chain, "TrainingQueueUrl") == 0, 120, what="the training queue to empty"
    )
    report.training_dead_letters = queue_depth(chain, "TrainingDeadLetterQueueUrl")
    assert report.training_dead_letters == 0
    for model in report.models:
        versions = chain.versions(model)
        lists = Counter(version.tags.get("accepted_list_hash") for version in versions)
        assert max(lists.values()) == 1, f"{model}: versions share a data list: {lists}"
        assert versions[-1].version == final_versions[model].version
        # Coalesced: a version for every few files, not one per file (and a model that got fewer
        # than three files in a small run may still have its one version).
        accepted = len(report.ledger.accepted[model]["datasets"])
        allowed = max(1, accepted // 3)
        assert len(versions) <= allowed, f"{model}: {len(versions)} versions for {accepted} files"


def _assert_outcomes_match_what_was_sent(
    chain: Chain, uploads: list[Upload], outcomes: dict[str, str | None], ledger: Ledger
) -> None:
    quarantine = chain.outputs["QuarantineBucketName"]
    assert not ledger.accepted_keys & ledger.quarantined_keys, "files both accepted and quarantined"
    for upload in uploads:
        if upload.bad:
            assert outcomes[upload.key] == "quarantined", upload.key
            report = json.loads(
                chain.s3.get_object(Bucket=quarantine, Key=f"{upload.key}.report.json")["Body"].read()
            )
            assert report["rule"] in EXPECTED_RULES[upload.kind], (upload.key, report["rule"])
        else:
            assert outcomes[upload.key] in {"accepted", "duplicate"}, (upload.key, outcomes[upload.key])
    # Each distinct good content is accepted exactly once: under one of its keys, the others duplicates.
    assert set(ledger.accepted_hashes) == {(u.model, u.content_hash) for u in uploads if not u.bad}
    for model, document in ledger.accepted.items():
        hashes = [entry["content_hash"] for entry in document["datasets"]]
        assert len(hashes) == len(set(hashes)), f"{model}: a content accepted twice"
    # One DatasetQuarantined event per quarantined file, no more.
    for model in ledger.accepted:
        expected = sorted(u.key for u in uploads if u.model == model and outcomes[u.key] == "quarantined")
        eventually(_announced(chain, model, len(expected)), 60, what=f"DatasetQuarantined for {model}")
        assert _quarantine_events(chain, model) == expected


def _quarantine_events(chain: Chain, model: str) -> list[str]:
    """The keys the model's DatasetQuarantined events name, one per event."""
    events = chain.events.of(("DatasetQuarantined", model))
    return sorted(event["body"]["detail"]["source"]["key"] for event in events)


def _announced(chain: Chain, model: str, count: int) -> Callable[[], bool]:
    return lambda: len(_quarantine_events(chain, model)) >= count
