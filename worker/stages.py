"""`arrival-train`: the stages of the DVC pipeline (dvc.yaml). A data scientist's `dvc repro` and the
worker's run call these same commands, in a workspace holding params.yaml, contract.yaml and
data/accepted.json."""

from __future__ import annotations

import functools
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
import typer
import yaml

from common.contracts import DataContract, Task, parse_contract
from worker.workspace import note_stage_failure, note_stage_seconds

# Each stage is its own process: each imports only what it uses (scikit-learn alone takes ~2 s).

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
Workspace = Annotated[Path, typer.Option(help="the DVC workspace")]
_Stage = TypeVar("_Stage", bound=Callable[..., None])


def _noting_failure(stage: _Stage) -> _Stage:
    """Leave the stage's error in the workspace for the worker's dead-letter reason, then fail. A
    recipe's failure is noted as deterministic, with its traceback's last lines. A stage that
    succeeds notes how long it took."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> None:
        from worker.recipes import RecipeError

        workspace = Path(kwargs.get("workspace", Path()))
        started = time.monotonic()
        try:
            stage(*args, **kwargs)
            note_stage_seconds(workspace, stage.__name__, time.monotonic() - started)
        except RecipeError as error:
            note_stage_failure(workspace, stage.__name__, f"recipe: {error}", deterministic=True)
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {' '.join(str(error).split())}"
            note_stage_failure(workspace, stage.__name__, message[:2000], deterministic=False)
            raise

    return run  # type: ignore[return-value]


def _recipe(workspace: Path) -> Any:
    """The workspace's recipe module, or None for the built-in pipeline (and in a workspace from
    before recipes, which has no recipe.py)."""
    from worker import recipes

    path = workspace / recipes.RECIPE_FILE
    return recipes.load(path, _contract(workspace).training.recipe) if path.exists() else None


def _contract(workspace: Path) -> DataContract:
    return parse_contract((workspace / "contract.yaml").read_bytes())


def _params(workspace: Path) -> dict[str, Any]:
    params: dict[str, Any] = yaml.safe_load((workspace / "params.yaml").read_text())
    return params


@app.command()
@_noting_failure
def prepare(workspace: Workspace = Path()) -> None:
    """Gather the accepted datasets, drop rows repeated across them, split off the holdout."""
    from common.adapters import s3
    from worker.splits import holdout_mask

    contract, params = _contract(workspace), _params(workspace)
    accepted = json.loads((workspace / "data" / "accepted.json").read_text())
    scratch = workspace / "data" / "downloads"
    scratch.mkdir(parents=True, exist_ok=True)
    frames = []
    for entry in accepted["datasets"]:
        local = scratch / f"{entry['content_hash']}.parquet"
        info = s3.head_object(accepted["bucket"], entry["processed_key"])
        s3.download(info, local)
        frames.append(pd.read_parquet(local))
    # Ingest drops a file's repeated rows; only rows repeated across files are left (1 s a million).
    dataset = pd.concat(frames, ignore_index=True)
    if len(frames) > 1:
        dataset = dataset.drop_duplicates(ignore_index=True)
    in_holdout = holdout_mask(dataset, params["holdout_fraction"])
    dataset[~in_holdout].to_parquet(workspace / "data" / "train.parquet", index=False)
    dataset[in_holdout].to_parquet(workspace / "data" / "holdout.parquet", index=False)
    for local in scratch.iterdir():
        local.unlink()
    scratch.rmdir()
    summary = {
        "rows": len(dataset),
        "train_rows": int((~in_holdout).sum()),
        "holdout_rows": int(in_holdout.sum()),
    }
    (workspace / "data" / "prepare.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"prepared {summary} for {contract.model}")


@app.command()
@_noting_failure
def train(workspace: Workspace = Path()) -> None:
    """Fit the model family the contract names, with fixed seeds."""
    from worker import recipes

    contract, params = _contract(workspace), _params(workspace)
    frame = pd.read_parquet(workspace / "data" / "train.parquet")
    recipe, path = _recipe(workspace), workspace / recipes.RECIPE_FILE
    fitted = recipes.fit(contract, recipe, path, params.get("estimator_params") or {}, frame)
    model, fit_seconds, searched = fitted.model, fitted.fit_seconds, fitted.searched
    (workspace / "model").mkdir(exist_ok=True)
    import joblib

    joblib.dump(model, workspace / "model" / "model.joblib")
    # Compute and memory of the fit alone, for the benchmarks (ru_maxrss is in KiB on Linux).
    usage = {
        "fit_seconds": fit_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (workspace / "model" / "train.json").write_text(json.dumps(usage, indent=2))
    (workspace / "model" / "trials.json").write_text(json.dumps(searched, indent=2, sort_keys=True))
    built = f"the recipe {contract.training.recipe}" if recipe is not None else contract.training.family
    typer.echo(f"trained {built} on {len(frame)} rows")


@app.command()
@_noting_failure
def evaluate(workspace: Workspace = Path()) -> None:
    """Score the model on the holdout, export it to ONNX and check ONNX agrees with it."""
    from worker import recipes

    contract = _contract(workspace)
    frame = pd.read_parquet(workspace / "data" / "holdout.parquet")
    import joblib

    recipe = _recipe(workspace)  # the pickled pipeline refers to the recipe's classes
    model = joblib.load(workspace / "model" / "model.joblib")
    # The holdout is empty only when the data holds a single distinct row (worker/splits.py): the
    # version then has no metrics, and the gate rejects it for that, instead of the training failing
    # until its job is dead-lettered.
    evaluated = recipes.evaluate(contract, recipe, workspace / recipes.RECIPE_FILE, model, frame)
    predicted, metrics, exported = evaluated.predicted, dict(evaluated.scores), evaluated.exported
    (workspace / "model" / "model.onnx").write_bytes(exported.onnx_bytes)
    (workspace / "model" / "export.json").write_text(json.dumps({"problem": exported.problem}, indent=2))
    metrics.update(exported.parity)
    (workspace / "model" / "serving_check.json").write_text(json.dumps(exported.check, indent=2, default=str))
    # A metric undefined on these rows (r2 on one row is NaN) is left out: NaN is not JSON (EventBridge
    # refuses an event carrying it), and the gate reads an absent score as one that is not finite.
    finite = {name: value for name, value in metrics.items() if math.isfinite(value)}
    (workspace / "metrics.json").write_text(json.dumps(finite, indent=2, sort_keys=True, allow_nan=False))
    plots = workspace / "plots"
    plots.mkdir(exist_ok=True)
    if contract.task is Task.classification:
        pd.DataFrame({"actual": frame[contract.target], "predicted": predicted}).to_csv(
            plots / "confusion.csv", index=False
        )
    else:
        pd.DataFrame({"actual": frame[contract.target], "predicted": predicted}).to_csv(
            plots / "predictions.csv", index=False
        )
    typer.echo(f"holdout metrics: {finite}")


if __name__ == "__main__":
    app()
