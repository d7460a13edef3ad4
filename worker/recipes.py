"""A model's recipe: the team's own preprocessing and estimator, a Python file that defines
`build_pipeline(params)` (docs/training.md). It runs only on the trainer, and on the operator's
machine for `arrival contract check`; never in a Lambda function or in serving, which take the ONNX
export.

Every training workspace holds `recipe.py`: the recipe's own bytes, or a line saying the built-in one
(worker/training.py) builds the model. The train and evaluate stages depend on it, so a new recipe
reruns them, and the run logs it, so `arrival reproduce` rebuilds with the same code.

A recipe is imported as a module named after its content hash. The fitted pipeline is pickled twice:
by joblib between the DVC stages (by reference: a stage imports the recipe again before it loads the
model), and by MLflow with cloudpickle, by value for the recipe's module, so that a version loads
without it (the trainer scores the champion, trained by an older recipe, beside the challenger)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from common.contracts import BUILT_IN_RECIPE

if TYPE_CHECKING:
    import pandas as pd

    from common.contracts import DataContract
    from worker.onnx_export import Exported

_T = TypeVar("_T")

RECIPE_FILE = "recipe.py"
BUILT_IN = b"# No recipe: worker/training.py's built-in pipeline for the contract's training.family.\n"
# The last lines of a recipe's traceback that a failure reports (dead letter, notification, status).
TRACE_LINES = 12


class RecipeError(Exception):
    """The recipe cannot be used, or its own code raised: the same code would fail the same way on
    every retry, so the job is dead-lettered at once (worker/main.py)."""

    deterministic = True


def recipe_hash(source: bytes) -> str:
    """What a version records of its recipe: the file's SHA-256, or "built-in"."""
    return BUILT_IN_RECIPE if is_built_in(source) else hashlib.sha256(source).hexdigest()


def is_built_in(source: bytes) -> bool:
    return source == BUILT_IN


# How each loaded recipe file is named in errors: as the contract names it (`recipes/houses.py`), not
# by the scratch workspace's `recipe.py`.
_SHOWN_AS: dict[str, str] = {}


def load(path: Path, shown_as: str | None = None) -> ModuleType | None:
    """The recipe module at `path`, imported once per content; None for the built-in marker. Raises
    RecipeError naming what is wrong: the file missing, its import raising, or no build_pipeline.
    `shown_as`: the name errors give the file (the contract's training.recipe)."""
    _SHOWN_AS[str(path.resolve())] = shown_as or path.name
    try:
        source = path.read_bytes()
    except OSError as error:
        raise RecipeError(f"cannot read the recipe {path}: {error.strerror}") from None
    if is_built_in(source):
        return None
    name = f"arrival_recipe_{hashlib.sha256(source).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import the recipe {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise RecipeError(f"importing the recipe raised {user_trace(error, path)}") from error
    if not callable(getattr(module, "build_pipeline", None)):
        del sys.modules[name]
        shown = _SHOWN_AS[str(path.resolve())]
        raise RecipeError(f"the recipe {shown} defines no build_pipeline(params) function")
    return module


def build(module: ModuleType, params: dict[str, Any], path: Path) -> Any:
    """The recipe's unfitted estimator; RecipeError if build_pipeline raises or returns no estimator."""
    try:
        estimator = module.build_pipeline(dict(params))
    except Exception as error:
        raise RecipeError(f"build_pipeline raised {user_trace(error, path)}") from error
    if not (callable(getattr(estimator, "fit", None)) and callable(getattr(estimator, "predict", None))):
        raise RecipeError(
            f"build_pipeline returned {type(estimator).__name__}, not an estimator with fit and predict "
            "(a scikit-learn Pipeline, usually)"
        )
    return estimator


def user_trace(error: BaseException, path: Path) -> str:
    """`Type: message`, then the traceback's last lines, with the recipe's file named as the user
    knows it rather than by the scratch workspace's path."""
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
    name = _SHOWN_AS.get(str(path.resolve()), path.name)
    shown = "\n".join(lines[-TRACE_LINES:]).replace(str(path.resolve()), name).replace(str(path), name)
    return f"{type(error).__name__}: {error}\n{shown}"


def estimator_for(
    contract: DataContract, module: ModuleType | None, params: dict[str, Any], path: Path
) -> Any:
    """The unfitted estimator a training fits: the recipe's, or the built-in one for the family."""
    from worker import training

    return build(module, params, path) if module is not None else training.build_model(contract, params)


def calling(module: ModuleType | None, path: Path, what: str, step: Callable[[], _T]) -> _T:
    """Run a step that calls the estimator. With a recipe, whatever it raises is the recipe's
    failure (its code, or its pipeline's choices on this data): a retry would fail the same way."""
    if module is None:
        return step()
    try:
        return step()
    except Exception as error:
        raise RecipeError(f"{what} raised {user_trace(error, path)}") from error


@dataclass(frozen=True)
class Fitted:
    model: Any
    fit_seconds: float
    searched: dict[str, Any]  # training.search's best parameters and trials (worker/tuning.py)


def fit(
    contract: DataContract, module: ModuleType | None, path: Path, params: dict[str, Any], frame: pd.DataFrame
) -> Fitted:
    """What the train stage fits on its rows: the contract's search first, if it has one, then the
    estimator with the best parameters. `arrival contract check` fits the same way."""
    import time

    from worker import training

    searched: dict[str, Any] = {"best_params": {}, "trials": []}
    if (search := contract.training.search) is not None:
        from worker import tuning

        def build(trial_params: dict[str, Any]) -> Any:
            return estimator_for(contract, module, trial_params, path)

        found = calling(
            module,
            path,
            "searching the recipe's parameters",
            lambda: tuning.search(contract, search, frame, build, params),
        )
        searched = found.as_json()
        params = {**params, **found.best_params}
    model = estimator_for(contract, module, params, path)
    features = training.features_of(frame, contract)
    started = time.perf_counter()
    calling(
        module, path, "fitting the recipe's pipeline", lambda: model.fit(features, frame[contract.target])
    )
    return Fitted(model, time.perf_counter() - started, searched)


@dataclass(frozen=True)
class Evaluated:
    predicted: Any  # the model's predictions for the holdout's rows
    scores: dict[str, float]  # the task's metrics (worker/training.py), none on an empty holdout
    exported: Exported  # the ONNX export, run on the holdout and checked against the model


def evaluate(
    contract: DataContract, module: ModuleType | None, path: Path, model: Any, holdout: pd.DataFrame
) -> Evaluated:
    """What the evaluate stage judges a fitted model by: its scores on the holdout, and its ONNX export
    run on the same rows. `arrival contract check` judges the same way."""
    from worker import training
    from worker.onnx_export import export

    features = training.features_of(holdout, contract)
    answers = calling(
        module,
        path,
        "predicting with the recipe's pipeline",
        lambda: training.answers(model, features, contract.task),
    )
    scores = training.score(contract, holdout[contract.target], answers.predicted) if len(holdout) else {}
    return Evaluated(answers.predicted, scores, export(model, holdout, features, contract, answers))


@dataclass(frozen=True)
class Trial:
    """A contract's pipeline fitted on one file, as the trainer would: its holdout scores, and why the
    trainer would refuse to serve it (None: servable)."""

    train_rows: int
    holdout_rows: int
    metrics: dict[str, float]
    not_servable: str | None
    best_params: dict[str, Any]  # training.search's choice, if the contract has one


def try_on(frame: pd.DataFrame, contract: DataContract, recipe_path: Path | None) -> Trial:
    """`arrival contract check` with a recipe: fit it on a file's rows (as ingest would store them),
    split, score and export as the pipeline's stages do, without any AWS call or MLflow. Raises
    RecipeError if the recipe cannot be loaded or its code raises."""
    import yaml

    from worker import training
    from worker.onnx_export import parity_problem
    from worker.splits import holdout_mask
    from worker.workspace import pipeline_file

    module = load(recipe_path, contract.training.recipe) if recipe_path is not None else None
    path = recipe_path or Path(RECIPE_FILE)
    fraction = yaml.safe_load(pipeline_file("params.yaml").read_text())["holdout_fraction"]
    in_holdout = holdout_mask(frame, fraction)
    train, holdout = frame[~in_holdout], frame[in_holdout]
    fitted = fit(contract, module, path, dict(contract.training.params), train)
    model, best = fitted.model, fitted.searched["best_params"]
    if holdout.empty:
        return Trial(len(train), 0, {}, training.EMPTY_HOLDOUT.reason, best)
    evaluated = evaluate(contract, module, path, model, holdout)
    exported = evaluated.exported
    problem = exported.problem or parity_problem(contract, exported.parity)
    return Trial(len(train), len(holdout), evaluated.scores, problem, best)
