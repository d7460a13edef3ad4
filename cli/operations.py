"""What the operator's commands do against a deployed stack (LocalStack or AWS, by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from common.adapters import s3
from common.adapters.stack import StackResources, stack_outputs
from common.contracts import DataContract, data_format_of, parse_contract
from common.layout import CONTRACT_PREFIX, accepted_list_hash, accepted_list_key, contract_key, recipe_key

if TYPE_CHECKING:
    import pandas as pd

    from common.champion import RolledBack
    from worker.recipes import Trial
    from worker.reproduce import Reproduction

T = TypeVar("T")


class OperationError(Exception):
    """A one-line reason the command cannot do what was asked, and what to do about it."""


def outputs_of(stack_name: str) -> dict[str, str]:
    """The stack's outputs, or an OperationError saying how to get a stack."""
    try:
        return stack_outputs(stack_name)
    except ClientError as error:
        # CloudFormation answers a missing stack with the generic ValidationError code: only its
        # message tells it apart from a malformed request.
        if "does not exist" in str(error):
            raise OperationError(f"no stack named {stack_name}: run `arrival deploy`") from None
        raise
    except BotoCoreError as error:
        raise OperationError(
            f"cannot reach the cloud to read stack {stack_name} ({error}): "
            "is the local cloud up (`arrival status`)?"
        ) from None


@dataclass(frozen=True)
class ContractPut:
    location: str
    recipe_location: str | None
    queued_training: bool  # the recipe changed and the model has data: a training was queued


def put_contract(path: Path, stack_name: str) -> ContractPut:
    """Upload after validating, so a typo never reaches the pipeline; with the recipe it names, which
    goes first, so that a contract naming a recipe always finds it. A changed recipe queues a training
    on the model's data (if it has any): new code on the same data is a new version."""
    text = _read_file(path, "contract")
    contract = _parsed(text, str(path))
    # Operators name the file after the prefix they upload data under; a contract declaring
    # another model would be filed, and its data listed, under that other name.
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if name != contract.model:
        raise OperationError(
            f"{path} is named {name!r} but declares model {contract.model!r}; "
            f"rename the file to {contract.model}.yaml or declare model: {name}"
        )
    recipe = _checked_recipe(path, contract)
    check_training(contract)
    outputs = outputs_of(stack_name)
    bucket = outputs["ConfigBucketName"]
    recipe_location, changed = None, False
    if recipe is not None:
        key = recipe_key(contract.model)
        before = s3.get_bytes(bucket, key)
        s3.put_bytes(bucket, key, recipe, "text/x-python")
        recipe_location, changed = f"s3://{bucket}/{key}", before is None or before[0] != recipe
    key = contract_key(contract.model)
    s3.put_bytes(bucket, key, text, "application/yaml")
    # Queued only once both are in place: a trainer taking the job at once reads the new pair.
    queued = changed and recipe is not None and _queue_training(outputs, contract.model, recipe)
    return ContractPut(f"s3://{bucket}/{key}", recipe_location, queued)


def _queue_training(outputs: dict[str, str], model: str, recipe: bytes) -> bool:
    """A training of the model's data as it is (False if it has none), and a trainer asked for at once,
    as ingest asks after queueing (otherwise the reconciler's schedule starts one)."""
    from common.adapters import functions
    from common.reconcile import queue_training
    from worker import recipes

    accepted = s3.get_bytes(outputs["ProcessedBucketName"], accepted_list_key(model))
    if accepted is None:
        return False
    # The job names the model only; the trainer reads the contract and recipe it then finds. Its
    # deduplication id is not the data list's alone, which a recent upload's job holds.
    list_hash = accepted_list_hash(json.loads(accepted[0]))
    identity = hashlib.sha256(f"{list_hash}:{recipes.recipe_hash(recipe)}".encode()).hexdigest()
    queue_training(outputs["ProcessedBucketName"], outputs["TrainingQueueUrl"], model, identity)
    if "ReconcileFunctionName" in outputs:
        functions.invoke_async(outputs["ReconcileFunctionName"], {"reason": "training queued"})
    return True


def check_training(contract: DataContract) -> None:
    """The trainer's own checks of the training settings (the metric fits the task, the parameters
    are the estimator's), before anything trains."""
    from worker import training

    try:
        training.check_training_settings(contract)
    except ValueError as error:
        raise OperationError(
            f"the trainer would refuse the contract of {contract.model!r}: {error}"
        ) from None


def _recipe_path(contract_path: Path, contract: DataContract) -> Path | None:
    return contract_path.parent / contract.training.recipe if contract.training.recipe else None


def _checked_recipe(contract_path: Path, contract: DataContract) -> bytes | None:
    """The recipe's bytes, once it has imported and built its pipeline here; None without one."""
    from worker import recipes

    path = _recipe_path(contract_path, contract)
    if path is None:
        return None
    if not path.is_file():
        raise OperationError(
            f"{contract_path} names the recipe {contract.training.recipe}, but there is no file {path}; "
            "the path is relative to the contract file"
        )
    try:
        module = recipes.load(path, contract.training.recipe)
        assert module is not None  # a file the user wrote is never the built-in marker
        recipes.build(module, dict(contract.training.params), path)
    except recipes.RecipeError as error:
        raise OperationError(f"the recipe {path} cannot be used: {error}") from None
    return path.read_bytes()


def reproduce(model: str, version: str, stack_name: str) -> Reproduction:
    from common.adapters import tracking
    from worker.reproduce import reproduce as reproduce_version

    remote = outputs_of(stack_name)["DvcRemoteUrl"]
    known = tracking.version_summaries(model, newest=1000)
    if not known:
        models = ", ".join(tracking.registered_models()) or "none yet"
        raise OperationError(f"model {model!r} has no versions (registered models: {models})")
    aliases = {alias for summary in known for alias in summary.aliases}
    if version not in {summary.version for summary in known} | aliases:
        named = ", ".join(sorted(aliases)) or "none"
        raise OperationError(
            f"model {model!r} has no version or alias {version!r} "
            f"(versions {known[-1].version} to {known[0].version}; aliases: {named})"
        )
    return reproduce_version(model, version, remote)


def rollback(model: str, to_version: str | None, by: str, stack_name: str) -> RolledBack:
    """Serve an earlier version (common/champion.py decides which, and carries it out)."""
    from common.champion import Champions, LifecycleError

    resources = StackResources.from_outputs(outputs_of(stack_name))
    try:
        return Champions.of_stack(resources).rollback(model, to_version, by)
    except LifecycleError as error:
        raise OperationError(str(error)) from error


def read_records(text: str, is_csv: bool) -> list[dict[str, Any]]:
    """Records from CSV (a header, then rows; empty cells are missing) or JSON (one record, a list of
    them, or {"records": [...]}). Numbers in CSV are sent as numbers; the API checks the rest."""
    if is_csv:
        return [
            {name: _csv_value(value) for name, value in row.items()}
            for row in csv.DictReader(io.StringIO(text))
        ]
    document = json.loads(text)
    if isinstance(document, dict) and "records" in document:
        document = document["records"]
    return document if isinstance(document, list) else [document]


def _csv_value(value: str | None) -> Any:
    if value is None or value.strip() in {"", "NA"}:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def predict(api_url: str, api_key: str, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST the records to the serving API; a 4xx comes back as an OperationError naming the field."""
    body = json.dumps(records[0] if len(records) == 1 else {"records": records}).encode()
    request = urllib.request.Request(  # noqa: S310  # the URL is the operator's own API
        f"{api_url.rstrip('/')}/models/{model}/predict",
        data=body,
        headers={"Content-Type": "application/json", "x-api-key": api_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise OperationError(
            f"the API refused the request ({error.code}): {error.read().decode()}"
        ) from error
    except urllib.error.URLError as error:
        raise OperationError(f"cannot reach the serving API at {api_url}: {error.reason}") from error
    return answer


# Each stage's dead-letter queue and the queue its messages are replayed to (stack outputs).
REDRIVE_QUEUES = {
    "ingest": ("IngestDeadLetterQueueUrl", "IngestQueueUrl"),
    "training": ("TrainingDeadLetterQueueUrl", "TrainingQueueUrl"),
    "batch": ("BatchDeadLetterQueueUrl", "BatchQueueUrl"),
}


REDRIVE_STAGES = [*REDRIVE_QUEUES, "notify"]


def redrive(stage: str, stack_name: str) -> int:
    """Moves a stage's dead-lettered messages back to its queue (after the cause is fixed): the
    ingest function takes the files again, a trainer the jobs. Returns how many moved."""
    from common.adapters import sqs

    if stage not in REDRIVE_STAGES:
        raise OperationError(f"unknown stage {stage!r}; redrive one of: {', '.join(REDRIVE_STAGES)}")
    outputs = outputs_of(stack_name)
    if stage == "notify":
        return _renotify(outputs["NotificationDeadLetterQueueUrl"], outputs["NotifyFunctionName"])
    dead_letters, queue = (outputs[name] for name in REDRIVE_QUEUES[stage])
    fifo_group = (lambda body: str(json.loads(body)["model"])) if stage == "training" else None
    return sqs.move_all(dead_letters, queue, fifo_group=fifo_group)


def _renotify(dead_letters: str, notify_function: str) -> int:
    """The notifier's dead letters are the bus's events it could not send, and no queue feeds it (the
    bus invokes it): each event goes to the function again, synchronously, and leaves the dead-letter
    queue once it was sent. The first that fails again stops the redrive, and it and the rest stay."""
    from common.adapters import functions, sqs

    sent = 0
    while batch := sqs.receive(dead_letters, wait_seconds=1, visibility_seconds=60):
        for position, message in enumerate(batch):
            try:
                functions.invoke(notify_function, json.loads(message["Body"]))
            except (functions.FunctionFailedError, json.JSONDecodeError) as error:
                for kept in batch[position:]:
                    sqs.extend_visibility(dead_letters, kept["ReceiptHandle"], 0)
                cause = (
                    f"message {message['MessageId']} is not an event: {error}"
                    if isinstance(error, json.JSONDecodeError)
                    else f"the notifier failed again ({error})"
                )
                raise OperationError(
                    f"{cause}; {sent} event(s) sent before it, the rest are still in the notify "
                    "dead-letter queue: `arrival logs` names the cause"
                ) from None
            sqs.delete(dead_letters, message["ReceiptHandle"])
            sent += 1
    return sent


# --- Contracts ---------------------------------------------------------------------------------------


def _contract_bytes(model: str, stack_name: str) -> tuple[bytes, str]:
    bucket = outputs_of(stack_name)["ConfigBucketName"]
    found = s3.get_bytes(bucket, contract_key(model))
    if found is None:
        known = ", ".join(contract_models(stack_name)) or "none yet"
        raise OperationError(
            f"no contract for model {model!r} in stack {stack_name} (models with one: {known}): "
            f"upload one with `arrival contract put {model}.yaml`"
        )
    return found[0], f"s3://{bucket}/{contract_key(model)}"


def contract_text(model: str, stack_name: str) -> str:
    return _contract_bytes(model, stack_name)[0].decode()


@dataclass(frozen=True)
class ContractDeleted:
    contract: str | None  # the key removed, None if there was no contract
    recipe: str | None  # the recipe's key removed with it, if the model had one


def delete_contract(model: str, stack_name: str) -> ContractDeleted:
    """Remove a model's contract and its recipe from the stack. Files arriving under `<model>/` are
    then quarantined (`no_contract`) until a contract is put again; its versions, its champion and
    what serves it stay. Safe to run again: what is already gone is reported as such."""
    bucket = outputs_of(stack_name)["ConfigBucketName"]
    removed: list[str | None] = []
    for key in (contract_key(model), recipe_key(model)):
        present = s3.exists(bucket, key)
        if present:
            s3.delete(bucket, key)
        removed.append(f"s3://{bucket}/{key}" if present else None)
    return ContractDeleted(removed[0], removed[1])


def contract_models(stack_name: str) -> list[str]:
    """Every model whose contract is in the stack's config bucket, sorted."""
    bucket = outputs_of(stack_name)["ConfigBucketName"]
    return sorted(
        key.removeprefix(CONTRACT_PREFIX).removesuffix(".yaml")
        for key, _ in s3.list_objects(bucket, CONTRACT_PREFIX)
        if key.endswith(".yaml") and "/" not in key.removeprefix(CONTRACT_PREFIX)
    )


def _parsed(text: bytes, where: str) -> DataContract:
    try:
        return parse_contract(text)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise OperationError(f"{where} is not valid YAML ({detail}); fix it, then check again") from None
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        lines = "".join(
            f"\n  {'.'.join(str(part) for part in problem['loc']) or 'contract'}: {problem['msg']}"
            for problem in problems
        )
        raise OperationError(
            f"{where} is not a valid contract, {len(problems)} problem(s):{lines}\nfix them, then check again"
        ) from None


def contract_for_check(path_or_model: str, stack_name: str) -> DataContract:
    """A local contract file, read without any AWS call; otherwise the stack's contract of that model."""
    path = Path(path_or_model)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        contract = _parsed(_read_file(path, "contract"), str(path))
        check_training(contract)
        _checked_recipe(path, contract)
        return contract
    text, where = _contract_bytes(path_or_model, stack_name)
    return _parsed(text, where)


def _read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise OperationError(f"no such {what} file: {path}; check the path")
    try:
        return path.read_bytes()
    except OSError as error:
        raise OperationError(f"cannot read {path} ({error.strerror}); check its permissions") from None


def _hashes(path: Path) -> tuple[str, str]:
    """The file's sha256 (ingest's content hash) and md5 (S3's ETag of a single-part upload)."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def try_recipe(
    frame: pd.DataFrame, contract: DataContract, contract_path_or_model: str, stack_name: str
) -> Trial:
    """The contract's recipe fitted on a file's rows (as ingest stores them), as the trainer would: the
    recipe beside a local contract file, or the one the stack holds for a model of the stack."""
    from worker import recipes

    local = Path(contract_path_or_model)
    try:
        if local.is_file():
            recipe = _recipe_path(local, contract)
            if recipe is not None and not recipe.is_file():
                raise OperationError(
                    f"{local} names the recipe {contract.training.recipe}, but there is no file {recipe}"
                )
            return recipes.try_on(frame, contract, recipe)
        with tempfile.TemporaryDirectory(prefix="arrival-recipe-") as scratch:
            return recipes.try_on(frame, contract, _stack_recipe(contract, stack_name, Path(scratch)))
    except recipes.RecipeError as error:
        raise OperationError(f"the trainer's job would fail: the recipe {error}") from None


def _stack_recipe(contract: DataContract, stack_name: str, scratch: Path) -> Path:
    """The recipe the stack holds for the model, written under `scratch` by the name its contract gives."""
    bucket = outputs_of(stack_name)["ConfigBucketName"]
    found = s3.get_bytes(bucket, recipe_key(contract.model))
    if found is None or contract.training.recipe is None:
        raise OperationError(
            f"the contract of {contract.model!r} names the recipe {contract.training.recipe}, but the stack "
            f"holds none (s3://{bucket}/{recipe_key(contract.model)}): put the contract with its recipe"
        )
    path = scratch / contract.training.recipe
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(found[0])
    return path


def check_file(
    path: Path, contract: DataContract, on_accepted: Callable[[Path], None] | None = None
) -> dict[str, Any] | None:
    """What ingest would decide about this file uploaded under `<model>/<its name>`: None if it would
    be accepted, else the report the quarantine would write (the same rules, run by common/ingest's
    own functions, in the same order; `source.bucket` and `quarantined_at` are null: nothing moved)."""
    from common import ingest, tabular
    from common.validation import DatasetRejectedError, Rule, reject

    _read_file(path, "data")
    key = f"{contract.model}/{path.name}"
    content_hash, md5 = _hashes(path)
    info = s3.ObjectInfo(bucket="", key=key, version_id=None, etag=md5, size=path.stat().st_size)
    try:
        data_format = data_format_of(path.name)
        if data_format is None:
            raise reject(Rule.unsupported_format, f"{path.name} is not .csv, .csv.gz or .parquet")
        ingest._check_before_reading(info, data_format, contract)
        tabular.check_inflated_size(path, data_format, contract.limits.max_file_bytes)
        source = ingest.DownloadedObject(info, data_format, path, content_hash)
        with tempfile.TemporaryDirectory(prefix="arrival-check-") as scratch:
            processed = Path(scratch) / "processed.parquet"
            ingest.convert(source, contract, processed, tabular.CHUNK_ROWS)
            if on_accepted is not None:  # the rows as ingest would store them
                on_accepted(processed)
    except DatasetRejectedError as rejected:
        return {
            "source": {"bucket": None, "key": key, "version_id": None, "etag": md5},
            "quarantine_key": ingest.quarantine_key(key),
            "size": info.size,
            "model": contract.model,
            "rule": rejected.rule.value,
            "violations": [violation.as_dict() for violation in rejected.violations],
            "contract_hash": contract.content_hash,
            "quarantined_at": None,
        }
    return None


# --- Following a file through the chain ---------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], deadline: float, what: str) -> T:
    """Poll until `probe` answers, or TimeoutError once time.monotonic() passes `deadline`."""
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen in time")
        time.sleep(0.5)
    return result


@dataclass(frozen=True)
class Uploaded:
    model: str
    bucket: str
    key: str
    version_id: str | None
    content_hash: str
    etag: str

    @property
    def source_uri(self) -> str:
        """As the trainer lists it in a run's `lineage.sources` (worker/decision.py)."""
        return f"s3://{self.bucket}/{self.key}?versionId={self.version_id}"


_CONTENT_TYPES = {
    "csv": "text/csv",
    "csv.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}


def upload(path: Path, model: str, stack_name: str) -> Uploaded:
    """Put the file in the raw bucket under `<model>/<its name>`, once its model has a contract."""
    body = _read_file(path, "data")
    _contract_bytes(model, stack_name)  # refuse before upload: ingest would only quarantine it
    bucket = outputs_of(stack_name)["RawBucketName"]
    key = f"{model}/{path.name}"
    data_format = data_format_of(path.name)
    content_type = _CONTENT_TYPES.get(data_format.value if data_format else "", "application/octet-stream")
    version_id = s3.put_bytes(bucket, key, body, content_type)
    content_hash, md5 = _hashes(path)
    return Uploaded(model, bucket, key, version_id, content_hash, md5)


@dataclass(frozen=True)
class FollowResult:
    """Where a file's journey got to: accepted (on its way), promoted, rejected, quarantined or
    duplicate."""

    outcome: str
    detail: str = ""
    version: str | None = None
    report: dict[str, Any] | None = None
    report_uri: str | None = None
    duplicate_of: str | None = None
    accepted: dict[str, Any] | None = None


class Follower:
    """Watches the deployed stack from outside, as a user would, through arrival's adapters."""

    def __init__(self, stack_name: str, say: Callable[[str], None]) -> None:
        self.outputs = outputs_of(stack_name)
        self.stack_name = stack_name
        self.say = say

    def accepted_entries(self, model: str) -> list[dict[str, Any]]:
        found = s3.get_bytes(self.outputs["ProcessedBucketName"], accepted_list_key(model))
        return list(json.loads(found[0])["datasets"]) if found else []

    def accepted_copy_of(self, uploaded: Uploaded) -> dict[str, Any] | None:
        """The accepted dataset with the same bytes from another upload: ingest keeps one copy of
        the same data per model, so this upload will never train anything."""
        for entry in self.accepted_entries(uploaded.model):
            same_source = (entry["source"]["key"], entry["source"].get("version_id")) == (
                uploaded.key,
                uploaded.version_id,
            )
            if entry["content_hash"] == uploaded.content_hash and not same_source:
                return entry
        return None

    def ingested(self, uploaded: Uploaded) -> FollowResult | None:
        """How ingest judged this object version (accepted, with its entry; quarantined; duplicate),
        or None while it has not."""
        from common.ingest import REPORT_SUFFIX, quarantine_key

        for entry in self.accepted_entries(uploaded.model):
            if (entry["source"]["key"], entry["source"].get("version_id")) == (
                uploaded.key,
                uploaded.version_id,
            ):
                return FollowResult("accepted", accepted=entry)
        bucket = self.outputs["QuarantineBucketName"]
        report_key = f"{quarantine_key(uploaded.key)}{REPORT_SUFFIX}"
        found = s3.get_bytes(bucket, report_key)
        report = json.loads(found[0]) if found else None
        if report and report["source"].get("version_id") == uploaded.version_id:
            return FollowResult(
                "quarantined", report["rule"], report=report, report_uri=f"s3://{bucket}/{report_key}"
            )
        if (copy := self.accepted_copy_of(uploaded)) is not None:
            source = copy["source"]
            return FollowResult(
                "duplicate",
                duplicate_of=f"s3://{source['bucket']}/{source['key']}?versionId={source['version_id']}",
            )
        return None

    def dead_lettered_reason(self, model: str, since_ms: int) -> str | None:
        """Why the model's training job was dead-lettered after `since_ms`, if it was: the job is
        the model's, not the file's, so a job failed after the upload is this upload's failure."""
        from common.adapters import sqs

        for message in sqs.peek(self.outputs["TrainingDeadLetterQueueUrl"]):
            sent_ms = int(message.get("Attributes", {}).get("SentTimestamp", 0))
            try:
                job_model = json.loads(message["Body"]).get("model")
            except ValueError:
                continue
            if job_model == model and sent_ms >= since_ms:
                reason = message.get("MessageAttributes", {}).get("failure_reason", {})
                return str(reason.get("StringValue") or "no reason recorded")
        return None

    def trainer(self) -> str | None:
        from common.adapters import ec2
        from common.reconcile import TRAINER_ROLE

        live = ec2.live_instances(TRAINER_ROLE, self.stack_name)
        return live[0] if live else None


def follow_upload(follow: Follower, uploaded: Uploaded, timeout: float) -> FollowResult:
    """Follow one object version through ingest, training and the gate, saying each step as it
    happens. Raises TimeoutError if the chain has not decided within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    ingested = wait_for(partial(follow.ingested, uploaded), deadline, "ingest")
    if ingested.accepted is None:
        return ingested
    entry = ingested.accepted
    follow.say(
        f"ingest Lambda: valid against the contract; {entry['rows']} rows "
        f"({entry['duplicate_rows_dropped']} duplicates dropped) -> "
        f"s3://{follow.outputs['ProcessedBucketName']}/{entry['processed_key']}"
    )
    queue = follow.outputs["TrainingQueueUrl"].rsplit("/", 1)[-1]
    follow.say(f"training job queued on {queue} (group '{uploaded.model}')")
    return _follow_training(follow, uploaded, deadline)


class TrainingFailedError(Exception):
    """The upload's training job was dead-lettered: the message is its failure reason."""


def _follow_training(follow: Follower, uploaded: Uploaded, deadline: float) -> FollowResult:
    from common.adapters import tracking

    model = uploaded.model
    uploaded_ms = int(time.time() * 1000) - 1000  # the follower's clock against SQS's: a second's slack

    def unless_failed(probe: Callable[[], T | None], what: str) -> T:
        def probe_or_fail() -> T | None:
            found = probe()
            if found is None and (reason := follow.dead_lettered_reason(model, uploaded_ms)):
                raise TrainingFailedError(reason)
            return found

        return wait_for(probe_or_fail, deadline, what)

    instance_id = unless_failed(follow.trainer, "a trainer instance")
    follow.say(f"trainer {instance_id} running (started by the reconciler)")
    run = unless_failed(lambda: tracking.run_with_source(model, uploaded.key), "an MLflow run")
    follow.say(f"MLflow run {run.run_id} is {run.status} (DVC: prepare, train, evaluate)")
    # The version id pins this upload: a file uploaded again under the same key is another source.
    decision = unless_failed(
        lambda: tracking.decided_version_with_source(model, uploaded.source_uri), "a judged version"
    )
    tags = decision.tags
    if "promotion" in tags:
        verdict, reason = "promoted", tags["promotion"]
    elif "rejected" in tags:
        verdict, reason = "rejected", tags["rejected"]
    else:  # passed the gate; the contract asks a person to approve it (superseded: a newer one waits)
        verdict, reason = "awaiting approval", tags.get("awaiting_approval") or tags.get("superseded", "")
    follow.say(f"version {decision.version} registered; gate: {verdict}: {reason}")
    return FollowResult(verdict.replace(" ", "_"), reason, version=decision.version)
