"""training.search: the estimator's parameters tuned with Optuna inside the train stage, before the
gate judges the result.

Each trial fits on the training rows outside a tuning split and is scored on those inside it, with the
contract's metric; the holdout the gate judges with is never seen, so a tuned challenger is judged as
fairly as an untuned one. The sampler is seeded, so the same rows and trials give the same model
(`arrival reproduce`), unless a time budget ended the search. The trials are written to
`model/trials.json`; the worker logs each as a run nested under the version's run (MLflow is not the
stage's business: a stage runs without it on a laptop)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from common.contracts import DataContract, Search, SearchRange
from worker import training
from worker.splits import holdout_mask

# A key of its own: the holdout's key would put every training row on the same side.
TUNING_SPLIT_KEY = "arrival-tuning"
TUNING_FRACTION = 0.25


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, Any]
    score: float | None  # None: the trial failed, or its score is not a finite number
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class SearchResult:
    best_params: dict[str, Any]
    best_score: float
    trials: list[Trial]

    def as_json(self) -> dict[str, Any]:
        return {
            "best_params": self.best_params,
            "best_score": self.best_score,
            "trials": [asdict(trial) for trial in self.trials],
        }


def _suggest(trial: Any, name: str, dimension: Any) -> Any:
    if isinstance(dimension, SearchRange):
        if dimension.integer:
            return trial.suggest_int(name, int(dimension.low), int(dimension.high), log=dimension.log)
        return trial.suggest_float(name, float(dimension.low), float(dimension.high), log=dimension.log)
    return trial.suggest_categorical(name, dimension.choices)


def search(
    contract: DataContract,
    search_settings: Search,
    frame: pd.DataFrame,
    build: Any,
    base_params: dict[str, Any],
) -> SearchResult:
    """The best of `search_settings.trials` parameter sets; `build(params)` makes an unfitted estimator.
    A trial whose fit raises is recorded as failed and the search goes on; only if every trial fails
    does the search fail, with the first trial's error."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inside = holdout_mask(frame, TUNING_FRACTION, key=TUNING_SPLIT_KEY)
    fit_rows, score_rows = frame[~inside], frame[inside]
    fit_features = training.features_of(fit_rows, contract)
    score_features = training.features_of(score_rows, contract)
    metric, direction = contract.training.metric, contract.training.direction
    worst = -math.inf if direction == "maximize" else math.inf
    trials: list[Trial] = []
    first_error: list[BaseException] = []

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, dimension) for name, dimension in search_settings.space.items()}
        started = time.perf_counter()
        try:
            model = build({**base_params, **params})
            model.fit(fit_features, fit_rows[contract.target])
            predicted = model.predict(score_features)
            score = training.score(contract, score_rows[contract.target], predicted)[metric]
        except Exception as error:
            first_error.append(error)
            trials.append(
                Trial(
                    trial.number,
                    params,
                    None,
                    time.perf_counter() - started,
                    f"{type(error).__name__}: {error}",
                )
            )
            return worst
        finite = math.isfinite(score)
        trials.append(Trial(trial.number, params, score if finite else None, time.perf_counter() - started))
        return score if finite else worst

    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=training.SEED))
    study.optimize(objective, n_trials=search_settings.trials, timeout=search_settings.timeout_seconds)
    scored = [trial for trial in trials if trial.score is not None]
    if not scored:
        raise first_error[0] if first_error else RuntimeError("no trial of the search finished")
    best = (max if direction == "maximize" else min)(scored, key=lambda trial: trial.score or 0.0)
    return SearchResult(best.params, float(best.score or 0.0), trials)
