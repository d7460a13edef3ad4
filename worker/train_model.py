"""One training of one model: a DVC workspace built from the model's accepted data, `dvc repro`, the
MLflow run and registered version, the champion/challenger gate, and the serving bundle.

Around it: the workspace (worker/workspace.py), carrying out the gate's decision and finishing a dead
trainer's (worker/decision.py), the bundle (worker/serving_bundle.py), `arrival reproduce`
(worker/reproduce.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import joblib
import pandas as pd
import yaml

from common.adapters import s3, tracking
from common.adapters.stack import StackResources
from common.champion import APPROVAL_MODE, Champions
from common.contracts import BUILT_IN_RECIPE, DataContract, parse_contract
from common.layout import accepted_list_hash, accepted_list_key, contract_key, recipe_key
from common.settings import get_worker_settings
from worker import drift_report, recipes, serving_bundle, training
from worker.adapters import dvc_workspace
from worker.decision import TrainingOutcome, finish_interrupted, lineage_of, source_uris
from worker.onnx_export import parity_problem
from worker.workspace import logged_files, stage_failure, stage_seconds, write_workspace

__all__ = ["Speculation", "TrainingOutcome", "train_model"]


class Speculation(Protocol):
    """Lets a training start before its data list has been still for the quiet period: the period
    then runs alongside the training instead of before it, and the training counts only if the list
    it read is still the list once the period is over."""

    def started(self, etag: str) -> None:
        """The training reads the list with this ETag."""

    def superseded(self) -> bool:
        """The list changed since: the training is moot."""

    def settle(self) -> bool:
        """Wait out the quiet period; False if the list changed meanwhile."""


class _NoSpeculation:
    def started(self, etag: str) -> None:
        pass

    def superseded(self) -> bool:
        return False

    def settle(self) -> bool:
        return True


class SupersededError(Exception):
    """The accepted list changed while a speculative training ran on an older one."""


@dataclass(frozen=True)
class TrainingRun:
    """What one training knows before its pipeline runs."""

    model: str
    contract: DataContract
    contract_bytes: bytes
    recipe: bytes  # the recipe's own bytes, or recipes.BUILT_IN
    accepted: dict[str, Any]
    resources: StackResources
    run_id: str
    tags: dict[str, str]
    speculation: Speculation
    timings: dict[str, float] = field(default_factory=dict)


# MLflow keeps at most this many characters of a tag's value and silently drops the rest
# (mlflow.utils.validation.MAX_TAG_VAL_LENGTH). A model's accepted list only grows, so the tags hold
# the newest sources that fit; the whole list is the run's `workspace/data/accepted.json` artifact.
TAG_VALUE_LIMIT = 8000


def newest_that_fit(items: list[str], limit: int = TAG_VALUE_LIMIT) -> str:
    """A JSON list of the last `items` whose encoding fits in `limit` characters, oldest first."""
    kept: list[str] = []
    size = 2  # the brackets
    for item in reversed(items):
        size += len(json.dumps(item)) + (2 if kept else 0)  # ", " between items
        if size > limit:
            break
        kept.append(item)
    return json.dumps(kept[::-1])


def lineage_tags(
    accepted: dict[str, Any], contract: DataContract, list_hash: str, recipe_hash: str = BUILT_IN_RECIPE
) -> dict[str, str]:
    sources = source_uris(accepted)
    return {
        "accepted_list_hash": list_hash,
        "recipe_hash": recipe_hash,
        "recipe": contract.training.recipe or BUILT_IN_RECIPE,
        "contract_hash": contract.content_hash,
        "lineage.sources": newest_that_fit(sources),
        "lineage.content_hashes": newest_that_fit([entry["content_hash"] for entry in accepted["datasets"]]),
        "lineage.files": str(len(sources)),
        "lineage.full": "workspace/data/accepted.json",
    }


@lru_cache(maxsize=8)
def _champion_model(name: str, version: str) -> Any:
    """A warm trainer keeps recent champions loaded: loading one is the slow part of the gate."""
    return tracking.load_model(name, version, get_worker_settings().trusted_artifact_roots)


def _champion_metric(
    contract: DataContract, holdout: pd.DataFrame
) -> tuple[tracking.ModelVersion | None, float | None]:
    champion = tracking.champion(contract.model)
    if champion is None:
        return None, None
    model = _champion_model(champion.name, champion.version)
    predicted = model.predict(training.features_of(holdout, contract))
    return champion, training.score(contract, holdout[contract.target], predicted)[contract.training.metric]


def train_model(
    model: str,
    resources: StackResources,
    workspace_root: Path | None = None,
    moments: dict[str, float] | None = None,
    speculation: Speculation | None = None,
) -> TrainingOutcome | None:
    """Train, log, register and judge one version on the model's current accepted data. `moments`
    (epoch seconds of the job's earlier steps) are logged with the run, for the chain's timing.
    None when `speculation` says the list changed under the training: nothing was registered, and
    the run ends KILLED, tagged with why."""
    speculation = speculation or _NoSpeculation()
    contract_found = s3.get_bytes(resources.config_bucket, contract_key(model))
    accepted_found = s3.get_bytes(resources.processed_bucket, accepted_list_key(model))
    if contract_found is None or accepted_found is None:
        raise LookupError(f"model {model!r} has no contract or no accepted data")
    contract = parse_contract(contract_found[0])
    training.check_training_settings(contract)
    recipe = _recipe_of(contract, resources)
    speculation.started(accepted_found[1])
    accepted = json.loads(accepted_found[0])
    list_hash = accepted_list_hash(accepted)
    if done := finish_interrupted(model, list_hash, resources, recipes.recipe_hash(recipe)):
        return done
    # A run on this list still RUNNING belongs to a trainer that died (its job came back to us).
    tracking.end_interrupted_runs(model, "accepted_list_hash", list_hash)
    tags = {
        **lineage_tags(accepted, contract, list_hash, recipes.recipe_hash(recipe)),
        # The code that trained it: the instance's release (deploy/arrival-boot.sh), or "checkout".
        "release": get_worker_settings().release_version or "checkout",
    }
    run = TrainingRun(
        model=model,
        contract=contract,
        contract_bytes=contract_found[0],
        recipe=recipe,
        accepted=accepted,
        resources=resources,
        run_id=tracking.start_run(model, tags),
        tags=tags,
        speculation=speculation,
        timings={**(moments or {}), "timing.training_started_at": time.time()},
    )
    try:
        with tempfile.TemporaryDirectory(prefix=f"arrival-{model}-", dir=workspace_root) as scratch:
            outcome = _train_in(Path(scratch), run)
    except SupersededError:
        tracking.log_run(run.run_id, tags={"superseded": "the accepted list changed during this training"})
        tracking.end_run(run.run_id, "KILLED")
        return None
    except BaseException as error:
        # The training's own error is what the job's failure must report: an unreachable tracking
        # server failing this call too must not replace it (the next trainer ends the run anyway).
        # A trainer being stopped (SIGTERM's SystemExit) did not fail the training: its job goes back
        # to the queue, and the run ends KILLED, as a dead trainer's run does.
        status = "FAILED" if isinstance(error, Exception) else "KILLED"
        if isinstance(error, Exception):  # the run says why it failed (a recipe's traceback)
            reason = f"{type(error).__name__}: {error}"[:5000]
            with contextlib.suppress(Exception):  # ending the run matters more
                tracking.log_run(run.run_id, tags={"failure.reason": reason})
        try:
            tracking.end_run(run.run_id, status)
        except Exception:
            logging.getLogger(__name__).warning("could not mark run %s %s", run.run_id, status, exc_info=True)
        raise
    tracking.end_run(run.run_id)
    return outcome


def _recipe_of(contract: DataContract, resources: StackResources) -> bytes:
    """The recipe the contract names, as `arrival contract put` uploaded it; the built-in marker if it
    names none. `contract put` writes the recipe before the contract, so a contract naming one finds it
    (a training starting between the two writes takes the new recipe with the contract before it)."""
    if contract.training.recipe is None:
        return recipes.BUILT_IN
    found = s3.get_bytes(resources.config_bucket, recipe_key(contract.model))
    if found is None:
        raise recipes.RecipeError(
            f"the contract of {contract.model!r} names the recipe {contract.training.recipe}, but the stack "
            f"holds none (s3://{resources.config_bucket}/{recipe_key(contract.model)}): run "
            f"`arrival contract put` with the contract beside its recipe"
        )
    return found[0]


def _run_pipeline(workspace: Path, run: TrainingRun) -> None:
    started = time.monotonic()
    write_workspace(workspace, run.contract_bytes, run.accepted, run.resources.processed_bucket, run.recipe)
    dvc_workspace.init(workspace, f"{run.resources.dvc_remote_url}/{run.model}")
    dvc_workspace.track(workspace, "data/accepted.json")
    try:
        dvc_workspace.reproduce(workspace)
    except Exception as error:
        if run.speculation.superseded():  # its stages were ended on purpose
            raise SupersededError from None
        noted = stage_failure(workspace)
        if noted is not None:
            raise noted from error
        raise
    run.timings["timing.repro_seconds"] = time.monotonic() - started
    stages = stage_seconds(workspace)
    run.timings.update({f"timing.stage.{name}_seconds": seconds for name, seconds in stages.items()})
    if not run.speculation.settle():
        raise SupersededError
    run.timings["timing.settled_at"] = time.time()
    dvc_workspace.push(workspace)


def _judge(
    run: TrainingRun, metrics: dict[str, float], holdout: pd.DataFrame, export_problem: str | None = None
) -> tuple[training.GateDecision, tracking.ModelVersion | None, float | None]:
    """The gate; and a version it would promote is still rejected if its ONNX export cannot serve it."""
    if holdout.empty:  # neither model can be scored on no rows: scikit-learn refuses them
        return training.EMPTY_HOLDOUT, tracking.champion(run.contract.model), None
    champion, champion_metric = _champion_metric(run.contract, holdout)
    # The evaluate stage leaves out a score that is not finite (worker/stages.py).
    challenger = metrics.get(run.contract.training.metric, float("nan"))
    decision = training.gate(run.contract.training, challenger, champion_metric)
    if export_problem:  # whatever its score: it cannot be served, and that is what to fix
        decision = training.GateDecision(False, f"not servable: {export_problem}")
    elif decision.promote and (problem := parity_problem(run.contract, metrics)):
        decision = training.GateDecision(False, f"not servable: {problem}")
    return decision, champion, champion_metric


def _log_trials(run: TrainingRun, trials: list[dict[str, Any]]) -> None:
    """training.search's trials, each a run nested under the version's (worker/tuning.py)."""
    metric = f"tuning.{run.contract.training.metric}"
    tracking.log_nested_runs(
        run.run_id,
        [
            tracking.NestedRun(
                name=f"trial {trial['number']}",
                params=trial["params"],
                metrics={metric: trial["score"], "tuning.seconds": trial["seconds"]}
                if trial["score"] is not None
                else {"tuning.seconds": trial["seconds"]},
                tags={"tuning.error": trial["error"]} if trial["error"] else {},
                finished=trial["error"] is None,
            )
            for trial in trials
        ],
    )


def _train_in(workspace: Path, run: TrainingRun) -> TrainingOutcome:
    _run_pipeline(workspace, run)
    metrics = json.loads((workspace / "metrics.json").read_text())
    prepared = json.loads((workspace / "data" / "prepare.json").read_text())
    trained = json.loads((workspace / "model" / "train.json").read_text())
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    holdout = pd.read_parquet(workspace / "data" / "holdout.parquet")
    searched = json.loads((workspace / "model" / "trials.json").read_text())
    export_problem = json.loads((workspace / "model" / "export.json").read_text())["problem"]
    decision, champion, champion_metric = _judge(run, metrics, holdout, export_problem)
    drifted = drift_report.training_report(run.contract, run.accepted, run.resources, run.run_id, workspace)
    logged_metrics = {
        **metrics,
        **{f"data.{key}": float(value) for key, value in prepared.items()},
        **{f"train.{key}": float(value) for key, value in trained.items()},
    }
    if champion_metric is not None:
        logged_metrics[f"champion.{run.contract.training.metric}"] = champion_metric
    log_started = time.monotonic()
    gate_tags = {
        "gate.decision": "promote" if decision.promote else "reject",
        "gate.reason": decision.reason,
        APPROVAL_MODE: run.contract.training.approval,
    }
    tracking.log_run(
        run.run_id,
        params={
            "model": run.model,
            "task": run.contract.task.value,
            "family": run.contract.training.family if run.contract.training.recipe is None else "recipe",
            "recipe": run.contract.training.recipe or "built-in",
            "metric": run.contract.training.metric,
            "holdout_fraction": params["holdout_fraction"],
            **{f"estimator.{key}": value for key, value in params["estimator_params"].items()},
            **{f"search.best.{key}": value for key, value in searched["best_params"].items()},
        },
        metrics={**logged_metrics, **run.timings, "timing.drift_seconds": drifted.seconds},
        tags={**run.tags, **gate_tags, **drifted.run_tags},
        artifacts=[
            *logged_files(workspace),
            ("onnx", workspace / "model" / "model.onnx"),
            ("onnx", workspace / "model" / "serving_check.json"),
            ("plots", workspace / "plots"),
            *drifted.artifacts,
        ],
    )
    _log_trials(run, searched["trials"])
    example = training.features_of(holdout.head(5), run.contract)
    recipe_module = recipes.load(workspace / recipes.RECIPE_FILE)  # the pickle refers to its classes
    fitted = joblib.load(workspace / "model" / "model.joblib")
    version = tracking.log_and_register_model(
        run.run_id,
        run.model,
        fitted,
        example,
        {
            "accepted_list_hash": run.tags["accepted_list_hash"],
            "recipe_hash": run.tags["recipe_hash"],
            **gate_tags,
            "gate.champion_version": champion.version if champion else "",
            **drifted.version_tags,
        },
        code_modules=[module for module in [recipe_module, sys.modules.get("worker.boosting")] if module],
    )
    if decision.promote:
        serving_bundle.publish_from_directory(
            run.resources.models_bucket,
            run.contract,
            version,
            workspace / "model",
            metrics,
            lineage_of(run.run_id, run.accepted, run.tags, (workspace / "dvc.lock").read_text()),
        )
    tracking.log_run(
        run.run_id,
        metrics={
            "timing.log_register_seconds": time.monotonic() - log_started,
            "timing.registered_at": time.time(),
            "worker.peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    )
    detail = {
        "name": run.model,
        "version": version,
        "metrics": metrics,
        "champion_version": champion.version if champion else None,
        "reason": decision.reason,
        "run_id": run.run_id,
        "lineage": json.loads(run.tags["lineage.sources"]),
        "lineage_files": len(run.accepted["datasets"]),
    }
    promoted = Champions.of_stack(run.resources).decide(
        run.model,
        version,
        decision.promote,
        decision.reason,
        detail,
        run.contract.training.approval,
    )
    tracking.log_run(run.run_id, metrics={"timing.decided_at": time.time()})
    drift_report.publish(run.resources, drifted)
    return TrainingOutcome(run.model, version, promoted, decision.reason, metrics, run.run_id)
