"""Training as pure steps: the deterministic holdout, the estimator a contract asks for, metrics, and
the champion/challenger gate. No I/O here; the DVC stages and the worker do that."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from common.bundles import MISSING_CATEGORY
from common.contracts import CategoricalColumn, DataContract, Task, TrainingSettings
from worker.splits import holdout_mask

__all__ = ["MISSING_CATEGORY", "SEED", "build_model", "features_of", "gate", "holdout_mask", "score"]

SEED = 20261127

_FAMILIES: dict[tuple[Task, str], Any] = {
    (Task.classification, "random_forest"): RandomForestClassifier,
    (Task.regression, "random_forest"): RandomForestRegressor,
    # The classic estimators, not HistGradientBoosting*: skl2onnx 1.20 cannot convert those fitted by
    # scikit-learn 1.9 ("Expected an int, got a boolean"), and every family must export to ONNX.
    (Task.classification, "gradient_boosting"): GradientBoostingClassifier,
    (Task.regression, "gradient_boosting"): GradientBoostingRegressor,
    (Task.classification, "linear"): LogisticRegression,
    (Task.regression, "linear"): LinearRegression,
    # worker/boosting.py's, imported only by a training that asks for them.
    (Task.classification, "lightgbm"): "LGBMClassifier",
    (Task.regression, "lightgbm"): "LGBMRegressor",
    (Task.classification, "xgboost"): "XGBoostClassifier",
    (Task.regression, "xgboost"): "XGBRegressor",
}
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 100, "n_jobs": 2},
    "gradient_boosting": {"n_estimators": 200},
    "linear": {},
    # Deterministic: `arrival reproduce` must give the same model (LightGBM's threads may otherwise
    # sum histograms in another order); quiet, or every fit logs its warnings to the trainer's log.
    "lightgbm": {
        "n_estimators": 100,
        "n_jobs": 2,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    },
    "xgboost": {"n_estimators": 100, "n_jobs": 2, "tree_method": "hist"},
}


class UnknownFamilyError(ValueError):
    pass


def check_training_settings(contract: DataContract) -> None:
    """Fail before any work with a reason a person can act on: an unknown family or a metric that
    does not fit the task."""
    family = contract.training.family
    if (contract.task, family) not in _FAMILIES:
        known = sorted({name for _, name in _FAMILIES})
        raise UnknownFamilyError(f"unknown model family {family!r}; known: {', '.join(known)}")
    if contract.training.metric not in _TASK_METRICS[contract.task]:
        raise ValueError(
            f"metric {contract.training.metric!r} does not fit a {contract.task} task; "
            f"use one of {_TASK_METRICS[contract.task]}"
        )
    estimator_class = _FAMILIES[(contract.task, family)]
    # The boosters take any of their library's parameters (and aliases) as keywords: not checked.
    if contract.training.recipe is None and not isinstance(estimator_class, str):
        named = set(contract.training.params)
        if contract.training.search is not None:
            named |= set(contract.training.search.space)
        unknown = sorted(named - set(estimator_class().get_params()))
        if unknown:
            takes = ", ".join(sorted(estimator_class().get_params()))
            raise ValueError(
                f"training.params or training.search.space name {unknown}, which {estimator_class.__name__} "
                f"(family {family}) does not take; it takes: {takes}"
            )


def build_model(contract: DataContract, params: dict[str, Any] | None = None) -> Pipeline:
    check_training_settings(contract)
    family = contract.training.family
    estimator_class = _FAMILIES[(contract.task, family)]
    if isinstance(estimator_class, str):
        from worker import boosting

        estimator_class = getattr(boosting, estimator_class)
    settings = {**_DEFAULT_PARAMS[family], **contract.training.params, **(params or {})}
    if "random_state" in estimator_class().get_params():
        settings.setdefault("random_state", SEED)
    numeric = [
        name for name in contract.features if not isinstance(contract.columns[name], CategoricalColumn)
    ]
    categorical = [name for name in contract.features if name not in numeric]
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if family == "linear":
        numeric_steps.append(("scale", StandardScaler()))
    categories = [[*contract.columns[name].categories, MISSING_CATEGORY] for name in categorical]  # type: ignore[union-attr]
    preprocess = ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            # Missing categories arrive as MISSING_CATEGORY (features_of), a category of its own.
            (
                "categorical",
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ],
        sparse_threshold=0,
    )
    return Pipeline([("preprocess", preprocess), ("estimator", estimator_class(**settings))])


def features_of(frame: pd.DataFrame, contract: DataContract) -> pd.DataFrame:
    """The feature columns, with categorical ones as plain objects (sklearn and ONNX want str/None)."""
    features = frame[contract.features].copy()
    for name in contract.features:
        if isinstance(contract.columns[name], CategoricalColumn):
            features[name] = features[name].astype(object).where(features[name].notna(), MISSING_CATEGORY)
    return features


@dataclass(frozen=True)
class Answers:
    """A model's answers on some rows: its predictions, and a classifier's class probabilities."""

    predicted: np.ndarray
    probabilities: np.ndarray | None


def answers(model: Any, features: pd.DataFrame, task: Task) -> Answers:
    """What the model predicts for `features`, and a classifier's probabilities, each computed once:
    on 200,000 holdout rows a LightGBM's take 0.7 s a call. A Pipeline whose last step is a
    classifier whose own predict() is the argmax of its predict_proba() (scikit-learn's random forest,
    LightGBM's classifier: their code says so) gets its labels from the probabilities; any other
    model, a recipe's subclass included, is asked for both."""
    if task is not Task.classification or features.empty:
        return Answers(model.predict(features) if not features.empty else np.empty(0), None)
    probabilities = model.predict_proba(features)
    if isinstance(model, Pipeline) and type(model.steps[-1][1]) in _argmax_classifiers():
        return Answers(model.classes_[np.argmax(probabilities, axis=1)], probabilities)
    return Answers(model.predict(features), probabilities)


def _argmax_classifiers() -> set[type]:
    classifiers: set[type] = {RandomForestClassifier}
    if (lightgbm := sys.modules.get("lightgbm")) is not None:  # a model holding one has imported it
        classifiers.add(lightgbm.LGBMClassifier)
    return classifiers


METRICS = {
    "accuracy": lambda truth, predicted: accuracy_score(truth, predicted),
    "f1_macro": lambda truth, predicted: f1_score(truth, predicted, average="macro"),
    "rmse": lambda truth, predicted: root_mean_squared_error(truth, predicted),
    "mae": lambda truth, predicted: mean_absolute_error(truth, predicted),
    "r2": lambda truth, predicted: r2_score(truth, predicted),
}
_TASK_METRICS = {Task.classification: ["accuracy", "f1_macro"], Task.regression: ["rmse", "mae", "r2"]}


def score(contract: DataContract, truth: pd.Series, predicted: np.ndarray) -> dict[str, float]:
    names = _TASK_METRICS[contract.task]
    if contract.training.metric not in names:
        raise ValueError(
            f"metric {contract.training.metric!r} does not fit a {contract.task} task; use one of {names}"
        )
    if contract.task is Task.classification:
        truth_codes, predicted_codes = _as_codes(truth, predicted)
        return {name: float(METRICS[name](truth_codes, predicted_codes)) for name in names}
    return {name: float(METRICS[name](truth, predicted)) for name in names}


def _as_codes(truth: pd.Series, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as integers in the labels' sorted order: scikit-learn's metrics sort the labels of both
    arrays first, which on 200,000 string labels took 0.6 s against 0.05 s for integers, and the
    same order gives the same per-class sums, so the same scores to the last bit."""
    labels = np.concatenate([np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)])
    codes, _ = pd.factorize(labels, sort=True)
    return codes[: len(truth)], codes[len(truth) :]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


# worker/splits.py leaves the holdout empty only when the data holds a single distinct row.
EMPTY_HOLDOUT = GateDecision(
    False,
    "the holdout is empty: fewer than 2 distinct rows are too few to judge a model (one to fit on, "
    "one to judge with); upload more data",
)


def gate(settings: TrainingSettings, challenger: float, champion: float | None) -> GateDecision:
    """Promote only a challenger that clears the floor and beats the champion by the margin.

    A score that is not a finite number never promotes: NaN compares false with everything, so it
    would slip past each test below. A champion's such score means its own predictions are not finite
    numbers on these rows (the challenger's, on the same rows, are): it is broken, so a challenger
    that clears the floor replaces it."""
    metric = settings.metric
    if not math.isfinite(challenger):
        return GateDecision(
            False, f"{metric} is {challenger}, not a finite number: the holdout cannot judge this model"
        )
    better_sign = 1 if settings.direction == "maximize" else -1
    if settings.floor is not None and better_sign * (challenger - settings.floor) < 0:
        return GateDecision(False, f"{metric} {challenger:.6g} does not clear the floor {settings.floor:.6g}")
    cleared = "clears the floor" if settings.floor is not None else "(no floor set)"
    if champion is None:
        return GateDecision(True, f"first model; {metric} {challenger:.6g} {cleared}")
    if not math.isfinite(champion):
        return GateDecision(
            True,
            f"{metric} {challenger:.6g} {cleared}; the champion's {metric} is {champion} on the holdout, "
            "not a finite number, so it is replaced",
        )
    improvement = better_sign * (challenger - champion)
    if improvement <= settings.promotion_margin:
        return GateDecision(
            False,
            f"{metric} {challenger:.6g} vs champion {champion:.6g}: improvement {improvement:.6g} "
            f"is not above the margin {settings.promotion_margin:.6g}",
        )
    return GateDecision(True, f"{metric} {challenger:.6g} beats champion {champion:.6g} by {improvement:.6g}")
