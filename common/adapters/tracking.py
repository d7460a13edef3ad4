"""The only place arrival talks to MLflow: runs, the model registry, and the champion alias."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
# What loading the model needs, pinned to what trained it. Passed explicitly: inferring them costs
# about 6 s per log_model (a subprocess that imports the model).
_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "scipy", "cloudpickle")
# Distribution -> module, for the families that need one more library.
_BOOSTERS = {"lightgbm": "lightgbm", "xgboost-cpu": "xgboost"}


@dataclass(frozen=True)
class NestedRun:
    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    finished: bool


class NoTrackingServerError(RuntimeError):
    pass


@cache
def client() -> MlflowClient:
    # MLFLOW_TRACKING_URI comes from the environment (the instance agent, or the user's shell).
    # Without it MLflow would quietly create a store of its own in the working directory.
    if not mlflow.is_tracking_uri_set():  # type: ignore[no-untyped-call]
        raise NoTrackingServerError(
            "MLFLOW_TRACKING_URI is not set: point it at the stack's tracking server "
            "(`arrival status` shows the local cloud's)"
        )
    return MlflowClient()


def refused_login(error: BaseException) -> bool:
    """Whether the tracking server turned a request away for its login (HTTP 401): no login, or a
    wrong one. Retrying will not help until the stack's secret is fixed."""
    return isinstance(error, MlflowException) and error.get_http_status_code() == 401  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]


def pip_requirements(extra: Sequence[str] = ()) -> list[str]:
    return [f"{package}=={version(package)}" for package in (*_REQUIREMENTS, *extra)]


def start_run(model_name: str, tags: dict[str, str]) -> str:
    experiment = mlflow.set_experiment(model_name)
    run = client().create_run(experiment.experiment_id, tags=tags)
    return str(run.info.run_id)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


def log_run(
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: list[tuple[str, Path]] | None = None,
) -> None:
    """Params, metrics, tags and (folder, file or directory) artifacts. Through the client, not the
    fluent `start_run(run_id=...)`, whose exit would mark the run FINISHED while it still trains."""
    timestamp = int(time.time() * 1000)
    client().log_batch(
        run_id,
        metrics=[Metric(key, float(value), timestamp, 0) for key, value in (metrics or {}).items()],
        params=[Param(key, str(value)) for key, value in (params or {}).items()],
        tags=[RunTag(key, value) for key, value in (tags or {}).items()],
    )

    def upload(folder: str, path: Path) -> None:
        if path.is_dir():
            client().log_artifacts(run_id, str(path), artifact_path=folder)
        else:
            client().log_artifact(run_id, str(path), artifact_path=folder or None)

    # Each artifact is its own request through the tracking server to S3; side by side, a run's ten
    # small files take one round trip's time instead of ten.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for finished in [pool.submit(upload, folder, path) for folder, path in artifacts or []]:
            finished.result()


def log_nested_runs(parent_run_id: str, children: Sequence[NestedRun]) -> None:
    """One run per child (a search's trial), nested under the parent in MLflow's UI; finished, with
    FAILED for a child that failed."""
    parent = client().get_run(parent_run_id)
    for child in children:
        tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": child.name, **child.tags}
        run = client().create_run(parent.info.experiment_id, tags=tags)
        now = int(time.time() * 1000)
        client().log_batch(
            run.info.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in child.metrics.items()],
            params=[Param(key, str(value)) for key, value in child.params.items()],
        )
        client().set_terminated(run.info.run_id, status="FINISHED" if child.finished else "FAILED")


def log_and_register_model(
    run_id: str,
    name: str,
    model: Any,
    example: pd.DataFrame,
    version_tags: dict[str, str],
    code_modules: Sequence[ModuleType] = (),
) -> str:
    """Log the model with its signature and an input example, and register a new version. The tags go
    with the version's creation, in one request: a version never exists without them, so a trainer
    that dies right after registering leaves a version its successor can recognise and finish.
    `code_modules` (a recipe, the trainer's own estimator classes) are pickled by value, so the
    version loads without them: a later recipe may define the same names differently."""
    import cloudpickle  # type: ignore[import-untyped]

    for module in code_modules:
        cloudpickle.register_pickle_by_value(module)
    # The boosters' libraries, when the model holds one (their modules were imported to fit it).
    boosters = [package for package, module in _BOOSTERS.items() if module in sys.modules]
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(example, model.predict(example)),
        input_example=example,
        pip_requirements=pip_requirements(boosters),
        # cloudpickle, not skops: a skops load runs a trusted-types check that imports all of
        # scikit-learn (3-4 s). These models are our own trainer's output, not untrusted input.
        serialization_format="cloudpickle",
        run_id=run_id,
    )
    registered = str(mlflow.register_model(info.model_uri, name, tags=version_tags).version)
    return _only_version_of_run(name, run_id, registered)


def _only_version_of_run(name: str, run_id: str, registered: str) -> str:
    """The client retries a request whose answer it lost (a tracking server restarting mid-call), and
    a retried create would register a second version of the same run. The first one stands; any
    other is deleted before anything can point at it."""
    found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    versions = sorted(int(version.version) for version in found) or [int(registered)]
    for extra in versions[1:]:
        client().delete_model_version(name, str(extra))
    return str(versions[0])


def end_interrupted_runs(experiment_name: str, tag: str, value: str) -> list[str]:
    """Runs a dead trainer left RUNNING for this tag: marked KILLED, so nobody takes them for live."""
    experiment = client().get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client().search_runs(
        [experiment.experiment_id], f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'"
    )
    for run in runs:
        client().set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in runs]


def finish_run_if_running(run_id: str) -> None:
    if client().get_run(run_id).info.status == "RUNNING":
        client().set_terminated(run_id, status="FINISHED")


def run_tags(run_id: str) -> dict[str, str]:
    return dict(client().get_run(run_id).data.tags)


def champion(name: str) -> ModelVersion | None:
    try:
        found = client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise
    return ModelVersion(name, str(found.version), str(found.run_id), dict(found.tags))


def model_version(name: str, version_or_alias: str) -> ModelVersion:
    """A version by number, or by alias ("champion")."""
    if version_or_alias.isdigit():
        found = client().get_model_version(name, version_or_alias)
    else:
        found = client().get_model_version_by_alias(name, version_or_alias)
    return ModelVersion(name, str(found.version), str(found.run_id), dict(found.tags))


def version_exists(name: str, model_version: str) -> bool:
    try:
        client().get_model_version(name, model_version)
    except MlflowException:
        return False
    return True


def registered_models() -> list[str]:
    return sorted(model.name for model in client().search_registered_models())


class UntrustedModelError(RuntimeError):
    """A registered version whose files live outside the artifact stores the trainer trusts."""


def load_model(name: str, model_version: str, trusted_roots: list[str]) -> Any:
    """Unpickles a registered version, so only one whose files the configured tracking server (or a
    store the operator named) holds: a version registered with a `source` elsewhere could run any
    code in the trainer."""
    location = client().get_model_version_download_uri(name, model_version)
    if not any(location.startswith(root) for root in trusted_roots):
        raise UntrustedModelError(
            f"version {model_version} of {name!r} is stored at {location!r}, outside the trusted artifact "
            f"stores {trusted_roots}; add its store to ARRIVAL_WORKER_TRUSTED_ARTIFACT_ROOTS if it is yours"
        )
    return _unpickle(location)


def _unpickle(location: str) -> Any:
    return mlflow.sklearn.load_model(location)


def move_champion(name: str, model_version: str) -> None:
    client().set_registered_model_alias(name, CHAMPION, model_version)


def tag_version(name: str, model_version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, model_version, key, value)


def untag_version(name: str, model_version: str, key: str) -> None:
    """A no-op when the tag is already gone, so a step that crashed half-way can be run again."""
    client().delete_model_version_tag(name, model_version, key)


def versions_of(name: str) -> list[ModelVersion]:
    """Every version of the model, oldest first; none if it has no version yet."""
    try:
        found = client().search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    versions = [ModelVersion(name, str(v.version), str(v.run_id), dict(v.tags)) for v in found]
    return sorted(versions, key=lambda version: int(version.version))


def promoted_versions(name: str) -> list[ModelVersion]:
    """Every version the gate (or a rollback) made champion at some time, oldest first."""
    found = client().search_model_versions(f"name = '{name}'")
    promoted = [
        ModelVersion(name, str(v.version), str(v.run_id), dict(v.tags))
        for v in found
        if "promotion" in v.tags
    ]
    return sorted(promoted, key=lambda version: int(version.version))


def versions_with_tag(name: str, key: str, value: str) -> list[ModelVersion]:
    """Raises when the registry cannot answer: "none" would let a caller register the same data
    list a second time once the server is back."""
    try:
        found = client().search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # the model has no versions yet
            return []
        raise
    return [ModelVersion(name, str(v.version), str(v.run_id), dict(v.tags)) for v in found]


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(client().get_run(run_id).data.metrics)


def download_run_artifacts(run_id: str, path: str, destination: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(destination))
    )


@dataclass(frozen=True)
class RunState:
    run_id: str
    status: str


def run_with_source(experiment_name: str, source_key: str) -> RunState | None:
    """The latest run whose training data includes this raw object."""
    experiment = client().get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client().search_runs(
        [experiment.experiment_id],
        f"tags.`lineage.sources` LIKE '%/{source_key}?%'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return RunState(runs[0].info.run_id, runs[0].info.status) if runs else None


def decided_version_with_source(name: str, source_key: str) -> ModelVersion | None:
    """The newest version trained on data that includes this raw object, once the gate has tagged it
    (promoted, rejected, or waiting for a person's approval)."""
    try:
        versions = client().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    decided = ("promotion", "rejected", "awaiting_approval", "superseded")
    for found in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if not any(tag in found.tags for tag in decided):
            continue
        if source_key in client().get_run(str(found.run_id)).data.tags.get("lineage.sources", ""):
            return ModelVersion(name, str(found.version), str(found.run_id), dict(found.tags))
    return None


@dataclass(frozen=True)
class VersionSummary:
    """A version as `arrival status` shows it: its aliases, tags and the run's metrics."""

    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    created_ms: int


def version_summaries(name: str, newest: int = 20) -> list[VersionSummary]:
    """The model's newest versions, newest first; none if the model has no version yet."""
    try:
        found = client().search_model_versions(f"name = '{name}'", max_results=1000)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    ordered = sorted(found, key=lambda v: int(v.version), reverse=True)[:newest]
    # A search leaves the versions' aliases out; the registered model lists them.
    aliases: dict[str, list[str]] = {}
    if ordered:
        for alias, aliased in client().get_registered_model(name).aliases.items():
            aliases.setdefault(str(aliased), []).append(alias)
    return [
        VersionSummary(
            str(v.version),
            str(v.run_id),
            sorted(aliases.get(str(v.version), [])),
            dict(v.tags),
            int(v.creation_timestamp or 0),
        )
        for v in ordered
    ]


def artifact_url(run_id: str, path: str) -> str:
    """Where a person opens one of a run's artifacts: the tracking server's own download route when
    it is a server, else MLflow's `runs:/` URI."""
    base = mlflow.get_tracking_uri()
    if base.startswith(("http://", "https://")):
        query = urlencode({"path": path, "run_uuid": run_id})
        return f"{base.rstrip('/')}/get-artifact?{query}"
    return f"runs:/{run_id}/{path}"
