"""training.search (worker/tuning.py): seeded, inside the training rows, every trial recorded."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts import DataContract, Search, parse_contract
from tests import datasets
from worker import training, tuning
from worker.splits import holdout_mask

SPACE = {
    "n_estimators": {"low": 10, "high": 40},
    "max_depth": {"choices": [2, 3]},
    "learning_rate": {"low": 0.05, "high": 0.5, "log": True},
}


def iris(family: str = "xgboost", **search: Any) -> DataContract:
    text = datasets.contract_yaml("iris", "tuned").replace(b"random_forest", family.encode())
    contract = parse_contract(text)
    chosen = Search.model_validate({"trials": 4, "space": SPACE, **search})
    settings = contract.training.model_copy(update={"search": chosen})
    return contract.model_copy(update={"training": settings})


def _search(contract: DataContract) -> tuning.SearchResult:
    frame = datasets.noisy_iris_frame(300, seed=4, noise=1.0)
    assert contract.training.search is not None
    return tuning.search(
        contract, contract.training.search, frame, lambda params: training.build_model(contract, params), {}
    )


def test_the_search_records_every_trial_and_picks_the_best_in_its_space() -> None:
    result = _search(iris())

    assert [trial.number for trial in result.trials] == [0, 1, 2, 3]
    assert result.best_score == max(trial.score or 0 for trial in result.trials)
    assert 10 <= result.best_params["n_estimators"] <= 40 and result.best_params["max_depth"] in (2, 3)
    assert 0.05 <= result.best_params["learning_rate"] <= 0.5


def test_the_same_rows_and_trials_give_the_same_search() -> None:
    first, second = _search(iris()), _search(iris())
    assert first.best_params == second.best_params
    assert [t.score for t in first.trials] == [t.score for t in second.trials]


def test_the_tuning_split_is_not_the_holdout_split() -> None:
    """The holdout's own key would put every training row outside a split of the same fraction."""
    frame = datasets.iris_frame(400, seed=5)
    train = frame[~holdout_mask(frame, 0.25)]
    inside = holdout_mask(train, tuning.TUNING_FRACTION, key=tuning.TUNING_SPLIT_KEY)
    assert 0.1 < inside.mean() < 0.4


def test_a_failing_trial_is_recorded_and_the_search_goes_on() -> None:
    contract = iris(family="random_forest", space={"n_estimators": {"choices": [5, -1]}}, trials=6)
    result = _search(contract)

    failed = [trial for trial in result.trials if trial.error]
    assert failed and all(trial.params["n_estimators"] == -1 for trial in failed)
    assert result.best_params == {"n_estimators": 5}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"alpha": {"low": 1, "high": 1}}, "must be below high"),
        ({"alpha": {"low": 0, "high": 1, "log": True}}, "needs low > 0"),
        ({"alpha": {"choices": []}}, "at least 1 item"),
        ({}, "at least 1 item"),
    ],
)
def test_a_search_space_that_cannot_be_sampled_is_refused(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Search.model_validate({"space": space})


def test_a_parameter_the_estimator_does_not_take_is_refused_before_training() -> None:
    contract = iris(family="random_forest", space={"n_trees": {"low": 10, "high": 20}})
    with pytest.raises(ValueError, match=r"\['n_trees'\], which RandomForestClassifier .* does not take"):
        training.check_training_settings(contract)


def test_contract_check_searches_as_the_train_stage_does() -> None:
    """`arrival contract check` fits what the trainer would: the searched parameters, not the defaults."""
    from worker import recipes

    trial = recipes.try_on(datasets.noisy_iris_frame(300, seed=4, noise=1.0), iris(), None)

    assert set(trial.best_params) == set(SPACE) and trial.not_servable is None
