"""A team's own recipe through the whole chain (issue 20): `arrival contract put` with the recipe, the
booted trainer fitting it, the gate, and the server answering with the recipe's hash in its lineage; a
new recipe on the same data retraining; a recipe that cannot serve, and one whose code raises."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tests import datasets
from tests.conftest import LocalCloud
from tests.e2e.conftest import Chain, arrival
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "recipes" / "house-prices.py").read_text()


def _contract_with_recipe(folder: Path, model: str, recipe_source: str) -> Path:
    """`<model>.yaml` naming `recipes/<model>.py` beside it, as a team keeps them."""
    (folder / "recipes").mkdir(exist_ok=True)
    (folder / "recipes" / f"{model}.py").write_text(recipe_source)
    contract = datasets.contract_yaml("house-prices", model).replace(
        b"family: gradient_boosting", f"recipe: recipes/{model}.py".encode()
    )
    path = folder / f"{model}.yaml"
    path.write_bytes(contract)
    return path


def _put(local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, chain: Chain, contract: Path) -> str:
    result = arrival(local_cloud, monkeypatch, "contract", "put", str(contract), "--stack-name", chain.stack)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_recipe_is_trained_served_retrained_when_it_changes_and_reproduced(
    chain: Chain,
    api: httpx.Client,
    local_cloud: LocalCloud,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unique: str,
) -> None:
    # GIVEN a contract whose recipe (interactions in a ColumnTransformer, a constant imputation,
    # LightGBM) is put with it, and data
    model = f"recipe-{unique}"
    contract = _contract_with_recipe(tmp_path, model, EXAMPLE)
    assert "recipe uploaded to" in _put(local_cloud, monkeypatch, chain, contract)
    chain.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(400, seed=21)))

    # THEN the trainer fits it, and the server answers with the recipe's hash in its lineage
    first = chain.wait_versions(model, 1)[0]
    assert "promotion" in first.tags, first.tags
    assert first.tags["recipe_hash"] == hashlib.sha256(EXAMPLE.encode()).hexdigest()

    def served() -> dict[str, object] | None:
        response = api.get(f"/models/{model}")
        return response.json() if response.status_code == 200 else None

    described = eventually(served, 30, what="the recipe's version served")
    assert described["lineage"]["recipe"] == f"recipes/{model}.py"  # type: ignore[index]
    assert described["lineage"]["recipe_hash"] == first.tags["recipe_hash"]  # type: ignore[index]
    record = {"area_m2": 120.0, "rooms": 4, "year_built": None, "district": "north", "heating": "gas"}
    answer = api.post(f"/models/{model}/predict", json=record)
    assert answer.status_code == 200 and answer.json()["prediction"] > 0, answer.text

    # WHEN only the recipe changes, and is put again
    changed = EXAMPLE.replace('params.get("learning_rate", 0.1)', 'params.get("learning_rate", 0.05)')
    _contract_with_recipe(tmp_path, model, changed)
    assert "a training on the model's data is queued" in _put(local_cloud, monkeypatch, chain, contract)

    # THEN the same data trains a second version, with the new recipe
    second = chain.wait_versions(model, 2)[-1]
    assert second.tags["recipe_hash"] == hashlib.sha256(changed.encode()).hexdigest()
    assert second.tags["accepted_list_hash"] == first.tags["accepted_list_hash"]

    # AND `arrival reproduce` rebuilds it from its run with the same recipe, metric for metric
    result = arrival(
        local_cloud, monkeypatch, "reproduce", second.version, "--model", model, "--stack-name", chain.stack
    )
    assert result.exit_code == 0, result.output
    assert "every metric matches" in result.output


NOT_SERVABLE = """
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer


def build_pipeline(params):
    areas = ColumnTransformer([("log_area", FunctionTransformer(np.log1p), ["area_m2"])])
    return Pipeline([("features", areas), ("estimator", Ridge())])
"""

RAISES = """
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline


class RoomsPerArea(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        raise ValueError("rooms_per_area needs rooms > 0")

    def transform(self, X):
        return X


def build_pipeline(params):
    return Pipeline([("rooms_per_area", RoomsPerArea()), ("estimator", Ridge())])
"""


# skl2onnx 1.20 converts SimpleImputer(add_indicator=True), then ONNX Runtime fails or strays on it.
CONVERTS_BUT_STRAYS = """
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline


def build_pipeline(params):
    numbers = ColumnTransformer([("impute", SimpleImputer(add_indicator=True), ["area_m2", "year_built"])])
    return Pipeline([("features", numbers), ("estimator", Ridge())])
"""


@pytest.mark.parametrize(
    ("recipe", "reasons"),
    [
        (NOT_SERVABLE, ["not servable: the pipeline does not convert to ONNX", "FunctionTransformer"]),
        (CONVERTS_BUT_STRAYS, ["not servable: the ONNX export"]),
    ],
    ids=["no converter", "converts but strays"],
)
def test_a_recipe_that_cannot_serve_is_rejected_saying_why(
    second_chain: Chain,
    local_cloud: LocalCloud,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unique: str,
    recipe: str,
    reasons: list[str],
) -> None:
    model = f"unservable-{unique}"
    _put(local_cloud, monkeypatch, second_chain, _contract_with_recipe(tmp_path, model, recipe))
    second_chain.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(200, seed=22)))

    version = second_chain.wait_versions(model, 1)[0]
    assert "rejected" in version.tags, version.tags
    for reason in reasons:
        assert reason in version.tags["gate.reason"], version.tags["gate.reason"]
    assert second_chain.champion(model) is None


def test_a_recipe_that_raises_fails_its_job_once_with_its_traceback_and_the_champion_stays(
    second_chain: Chain, local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unique: str
) -> None:
    # GIVEN a model served by the built-in pipeline
    model = f"raising-{unique}"
    second_chain.put_contract(model, datasets.contract_yaml("house-prices", model))
    second_chain.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(300, seed=23)))
    champion = second_chain.wait_versions(model, 1)[0].version
    assert second_chain.champion(model) == champion

    # WHEN a recipe whose transformer raises is put: it imports and builds, so put takes it
    _put(local_cloud, monkeypatch, second_chain, _contract_with_recipe(tmp_path, model, RAISES))

    # THEN its job is dead-lettered on its first attempt, saying where the recipe raised
    reason = second_chain.dead_letter_reason(model)
    assert "rooms_per_area needs rooms > 0" in reason
    assert f'File "recipes/{model}.py", line 9, in fit' in reason
    failed = eventually(lambda: second_chain.events.of(("TrainingFailed", model)), 30, what="TrainingFailed")[
        0
    ]["body"]["detail"]
    assert failed["attempts"] == 1 and "rooms_per_area needs rooms > 0" in failed["failure_reason"]
    experiment = second_chain.mlflow.get_experiment_by_name(model)
    assert experiment is not None
    runs = second_chain.mlflow.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    assert any("rooms_per_area needs rooms > 0" in run.data.tags.get("failure.reason", "") for run in runs)
    # AND the champion keeps serving
    assert second_chain.champion(model) == champion
    assert len(second_chain.versions(model)) == 1


def test_xgboost_with_a_search_promotes_the_best_trial_with_its_trials_nested(
    second_chain: Chain, unique: str
) -> None:
    model = f"xgb-{unique}"
    contract = datasets.contract_yaml("iris", model).replace(
        b"  family: random_forest\n",
        b"  family: xgboost\n"
        b"  search:\n"
        b"    trials: 3\n"
        b"    space:\n"
        b"      n_estimators: {low: 10, high: 60}\n"
        b"      max_depth: {choices: [2, 4]}\n",
    )
    assert b"search:" in contract
    second_chain.put_contract(model, contract)
    second_chain.upload(f"{model}/iris.csv", datasets.noisy_iris_csv(300, seed=24, noise=0.3))

    version = second_chain.wait_versions(model, 1)[0]
    assert "promotion" in version.tags, version.tags
    run = second_chain.mlflow.get_run(version.run_id)
    best = {
        key.removeprefix("search.best."): value
        for key, value in run.data.params.items()
        if "search.best" in key
    }
    assert set(best) == {"n_estimators", "max_depth"}
    trials = second_chain.mlflow.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{version.run_id}'"
    )
    assert len(trials) == 3
    top = max(trials, key=lambda trial: trial.data.metrics["tuning.f1_macro"])
    assert {name: top.data.params[name] for name in best} == best
