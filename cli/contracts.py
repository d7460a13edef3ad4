"""The operator's contract commands against a deployed stack: put, get, list, delete, and check a
file (and a recipe) against one."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from cli.operations import OperationError, outputs_of
from common.adapters import s3
from common.contracts import DataContract, data_format_of, parse_contract
from common.layout import CONTRACT_PREFIX, accepted_list_hash, accepted_list_key, contract_key, recipe_key

if TYPE_CHECKING:
    import pandas as pd

    from worker.recipes import Trial


@dataclass(frozen=True)
class ContractPut:
    location: str
    recipe_location: str | None
    queued_training: bool  # the recipe changed and the model has data: a training was queued


def put_contract(path: Path, stack_name: str) -> ContractPut:
    """Upload after validating, so a typo never reaches the pipeline; with the recipe it names, which
    goes first, so that a contract naming a recipe always finds it. A changed recipe queues a training
    on the model's data (if it has any): new code on the same data is a new version."""
    text = read_file(path, "contract")
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


def contract_bytes(model: str, stack_name: str) -> tuple[bytes, str]:
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
    return contract_bytes(model, stack_name)[0].decode()


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
        contract = _parsed(read_file(path, "contract"), str(path))
        check_training(contract)
        _checked_recipe(path, contract)
        return contract
    text, where = contract_bytes(path_or_model, stack_name)
    return _parsed(text, where)


def read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise OperationError(f"no such {what} file: {path}; check the path")
    try:
        return path.read_bytes()
    except OSError as error:
        raise OperationError(f"cannot read {path} ({error.strerror}); check its permissions") from None


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

    read_file(path, "data")
    key = f"{contract.model}/{path.name}"
    content_hash, md5 = file_hashes(path)
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


def file_hashes(path: Path) -> tuple[str, str]:
    """The file's sha256 (ingest's content hash) and md5 (S3's ETag of a single-part upload)."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()
