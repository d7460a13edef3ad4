"""One training of one model: a DVC workspace built from the model's accepted data, `dvc repro`, the
MLflow run and registered version, and the champion/challenger gate."""

from __future__ import annotations

import hashlib
import json
import resource
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import joblib
import pandas as pd
import yaml

from common.adapters import events, s3
from common.adapters.stack import StackResources
from common.contracts import DataContract, parse_contract
from common.layout import accepted_list_hash, accepted_list_key, contract_key
from worker import training
from worker.adapters import dvc_workspace, tracking

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE_FILES = [
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "contract.yaml",
    "code.json",
    "data/accepted.json",
    "data/accepted.json.dvc",
]


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
class TrainingOutcome:
    model: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    run_id: str
    trained: bool = True  # False when this data list was already trained (a repeated job)


def pipeline_file(name: str) -> Path:
    """dvc.yaml or params.yaml: inside the package when installed from a wheel (see pyproject.toml),
    at the project's root in a checkout."""
    packaged = Path(__file__).resolve().parent / "pipeline" / name
    return packaged if packaged.exists() else PROJECT_ROOT / name


def code_fingerprint() -> str:
    """Stages depend on the code that runs them; in a scratch workspace that code is the installed
    package, so its fingerprint is what the stages declare."""
    digest = hashlib.sha256()
    for path in sorted([*(PROJECT_ROOT / "common").rglob("*.py"), *(PROJECT_ROOT / "worker").rglob("*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_workspace(workspace: Path, contract_bytes: bytes, accepted: dict[str, Any], bucket: str) -> None:
    params = yaml.safe_load(pipeline_file("params.yaml").read_text())
    contract = parse_contract(contract_bytes)
    params["estimator_params"] = {**params.get("estimator_params", {}), **contract.training.params}
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    (workspace / "dvc.yaml").write_text(pipeline_file("dvc.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    (workspace / "contract.yaml").write_bytes(contract_bytes)
    (workspace / "code.json").write_text(json.dumps({"fingerprint": code_fingerprint()}))
    (workspace / "data" / "accepted.json").write_text(
        json.dumps({"bucket": bucket, **accepted}, indent=2, sort_keys=True)
    )


def lineage_tags(accepted: dict[str, Any], contract: DataContract, list_hash: str) -> dict[str, str]:
    sources = [
        f"s3://{entry['source']['bucket']}/{entry['source']['key']}?versionId={entry['source']['version_id']}"
        for entry in accepted["datasets"]
    ]
    return {
        "accepted_list_hash": list_hash,
        "contract_hash": contract.content_hash,
        "lineage.sources": json.dumps(sources),
        "lineage.content_hashes": json.dumps([entry["content_hash"] for entry in accepted["datasets"]]),
        "lineage.files": str(len(sources)),
    }


@lru_cache(maxsize=8)
def _champion_model(name: str, version: str) -> Any:
    """A warm trainer keeps recent champions loaded: loading one is the slow part of the gate."""
    return tracking.load_model(name, version)


def _champion_metric(
    contract: DataContract, holdout: pd.DataFrame
) -> tuple[tracking.ModelVersion | None, float | None]:
    champion = tracking.champion(contract.model)
    if champion is None:
        return None, None
    model = _champion_model(champion.name, champion.version)
    predicted = model.predict(training.features_of(holdout, contract))
    return champion, training.score(contract, holdout[contract.target], predicted)[contract.training.metric]


def _already_trained(model: str, list_hash: str, resources: StackResources) -> TrainingOutcome | None:
    """The version a run already made from this data list, if any (a repeated or redelivered job).
    If its trainer died after registering it but before acting on the gate's decision, which the
    version carries in its tags, the decision is carried out now."""
    existing = tracking.versions_with_tag(model, "accepted_list_hash", list_hash)
    if not existing:
        return None
    version = existing[0]
    decided = "promotion" in version.tags or "rejected" in version.tags
    promote, reason = version.tags.get("gate.decision") == "promote", version.tags.get("gate.reason", "")
    if not decided:
        champion = tracking.champion(model)
        if promote and champion is not None and int(champion.version) > int(version.version):
            promote, reason = False, f"champion moved to version {champion.version} meanwhile"
        run_tags = tracking.run_tags(version.run_id)
        _act_on_decision(
            resources,
            model,
            version.version,
            promote,
            reason,
            {
                "name": model,
                "version": version.version,
                "metrics": tracking.run_metrics(version.run_id),
                "champion_version": version.tags.get("gate.champion_version") or None,
                "reason": reason,
                "run_id": version.run_id,
                "lineage": json.loads(run_tags.get("lineage.sources", "[]")),
            },
        )
        tracking.finish_run_if_running(version.run_id)
    return TrainingOutcome(model, version.version, promote, reason, {}, version.run_id, trained=False)


def _act_on_decision(
    resources: StackResources, model: str, version: str, promote: bool, reason: str, detail: dict[str, Any]
) -> None:
    if promote:
        tracking.promote(model, version, reason)
        events.publish(resources.event_bus_name, "ModelPromoted", detail)
    else:
        tracking.reject(model, version, reason)
        events.publish(resources.event_bus_name, "ModelRejected", detail)


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
    speculation.started(accepted_found[1])
    accepted = json.loads(accepted_found[0])
    list_hash = accepted_list_hash(accepted)
    if done := _already_trained(model, list_hash, resources):
        return done
    # A run on this list still RUNNING belongs to a trainer that died (its job came back to us).
    tracking.end_interrupted_runs(model, "accepted_list_hash", list_hash)
    tags = lineage_tags(accepted, contract, list_hash)
    run_id = tracking.start_run(model, tags)
    try:
        with tempfile.TemporaryDirectory(prefix=f"arrival-{model}-", dir=workspace_root) as scratch:
            outcome = _train_in(
                Path(scratch),
                model,
                contract,
                contract_found[0],
                accepted,
                resources,
                run_id,
                tags,
                moments or {},
                speculation,
            )
    except SupersededError:
        tracking.log_run(run_id, tags={"superseded": "the accepted list changed during this training"})
        tracking.end_run(run_id, "KILLED")
        return None
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    return outcome


def _train_in(
    workspace: Path,
    model: str,
    contract: DataContract,
    contract_bytes: bytes,
    accepted: dict[str, Any],
    resources: StackResources,
    run_id: str,
    tags: dict[str, str],
    moments: dict[str, float],
    speculation: Speculation,
) -> TrainingOutcome:
    timings: dict[str, float] = {**moments, "timing.training_started_at": time.time()}
    started = time.monotonic()
    write_workspace(workspace, contract_bytes, accepted, resources.processed_bucket)
    dvc_workspace.init(workspace, f"{resources.dvc_remote_url}/{model}")
    dvc_workspace.track(workspace, "data/accepted.json")
    try:
        dvc_workspace.reproduce(workspace)
    except Exception:
        if speculation.superseded():  # its stages were ended on purpose
            raise SupersededError from None
        raise
    timings["timing.repro_seconds"] = time.monotonic() - started
    if not speculation.settle():
        raise SupersededError
    timings["timing.settled_at"] = time.time()
    dvc_workspace.push(workspace)
    metrics = json.loads((workspace / "metrics.json").read_text())
    prepared = json.loads((workspace / "data" / "prepare.json").read_text())
    trained = json.loads((workspace / "model" / "train.json").read_text())
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    holdout = pd.read_parquet(workspace / "data" / "holdout.parquet")
    fitted = joblib.load(workspace / "model" / "model.joblib")

    champion, champion_metric = _champion_metric(contract, holdout)
    decision = training.gate(contract.training, metrics[contract.training.metric], champion_metric)
    logged_metrics = {
        **metrics,
        **{f"data.{key}": float(value) for key, value in prepared.items()},
        **{f"train.{key}": float(value) for key, value in trained.items()},
    }
    if champion_metric is not None:
        logged_metrics[f"champion.{contract.training.metric}"] = champion_metric
    log_started = time.monotonic()
    tracking.log_run(
        run_id,
        params={
            "model": model,
            "task": contract.task.value,
            "family": contract.training.family,
            "metric": contract.training.metric,
            "holdout_fraction": params["holdout_fraction"],
            **{f"estimator.{key}": value for key, value in params["estimator_params"].items()},
        },
        metrics={**logged_metrics, **timings},
        tags={
            **tags,
            "gate.decision": "promote" if decision.promote else "reject",
            "gate.reason": decision.reason,
        },
        # The workspace's files are what `arrival reproduce` rebuilds the run from.
        artifacts=[
            *[
                (str(Path("workspace") / Path(name).parent).rstrip("/."), workspace / name)
                for name in WORKSPACE_FILES
            ],
            ("onnx", workspace / "model" / "model.onnx"),
            ("plots", workspace / "plots"),
        ],
    )
    example = training.features_of(holdout.head(5), contract)
    version = tracking.log_and_register_model(
        run_id,
        model,
        fitted,
        example,
        {
            "accepted_list_hash": tags["accepted_list_hash"],
            "gate.decision": "promote" if decision.promote else "reject",
            "gate.reason": decision.reason,
            "gate.champion_version": champion.version if champion else "",
        },
    )
    tracking.log_run(
        run_id,
        metrics={
            "timing.log_register_seconds": time.monotonic() - log_started,
            "timing.registered_at": time.time(),
            "worker.peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    )
    detail = {
        "name": model,
        "version": version,
        "metrics": metrics,
        "champion_version": champion.version if champion else None,
        "reason": decision.reason,
        "run_id": run_id,
        "lineage": json.loads(tags["lineage.sources"]),
    }
    _act_on_decision(resources, model, version, decision.promote, decision.reason, detail)
    tracking.log_run(run_id, metrics={"timing.decided_at": time.time()})
    return TrainingOutcome(model, version, decision.promote, decision.reason, metrics, run_id)


@dataclass(frozen=True)
class Reproduction:
    model: str
    version: str
    logged: dict[str, float]
    reproduced: dict[str, float]
    tolerance: float

    @property
    def differences(self) -> dict[str, float]:
        return {
            name: abs(self.reproduced.get(name, float("nan")) - value) for name, value in self.logged.items()
        }

    @property
    def matches(self) -> bool:
        return all(difference <= self.tolerance for difference in self.differences.values())


def reproduce(model: str, version: str, dvc_remote_url: str, tolerance: float = 1e-9) -> Reproduction:
    """Rebuild a version's workspace from what its run logged, `dvc pull`, rerun every stage, and
    compare the holdout metrics with the logged ones."""
    found = tracking.model_version(model, version)
    with tempfile.TemporaryDirectory(prefix=f"arrival-reproduce-{model}-") as scratch:
        downloaded = tracking.download_run_artifacts(found.run_id, "workspace", Path(scratch))
        workspace = Path(scratch) / "workspace"
        if downloaded != workspace:
            downloaded.rename(workspace)
        dvc_workspace.init(workspace, f"{dvc_remote_url}/{model}")
        dvc_workspace.pull(workspace)
        dvc_workspace.reproduce(workspace, force=True)
        reproduced = json.loads((workspace / "metrics.json").read_text())
    logged_metrics = tracking.run_metrics(found.run_id)
    logged = {name: logged_metrics[name] for name in reproduced if name in logged_metrics}
    return Reproduction(model, found.version, logged, reproduced, tolerance)
