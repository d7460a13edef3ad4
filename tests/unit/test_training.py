from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pandas as pd
import pytest
from pydantic import ValidationError

from common.contracts import FAMILIES, DataContract, TrainingSettings, parse_contract
from tests import datasets
from worker import training
from worker.onnx_export import parity, to_onnx_bytes


@pytest.fixture(scope="module")
def iris() -> DataContract:
    return parse_contract(datasets.contract_yaml("iris", "iris"))


@pytest.fixture(scope="module")
def houses() -> DataContract:
    return parse_contract(datasets.contract_yaml("house-prices", "houses"))


def test_the_holdout_depends_on_row_content_only() -> None:
    frame = datasets.iris_frame(2000)
    mask = training.holdout_mask(frame, 0.2)
    shuffled = frame.sample(frac=1, random_state=1)
    assert 0.15 < mask.mean() < 0.25
    assert (training.holdout_mask(shuffled, 0.2) == mask[shuffled.index.to_numpy()]).all()


@pytest.mark.parametrize("contract_name", ["iris", "houses"])
def test_each_task_trains_and_exports_an_onnx_model_that_agrees(
    contract_name: str, request: pytest.FixtureRequest
) -> None:
    contract: DataContract = request.getfixturevalue(contract_name)
    frame = datasets.iris_frame(300) if contract_name == "iris" else datasets.house_frame(300)
    model = training.build_model(
        contract, {"n_estimators": 20} if contract.training.family == "random_forest" else {}
    )
    features = training.features_of(frame, contract)
    model.fit(features, frame[contract.target])

    metrics = training.score(contract, frame[contract.target], model.predict(features))
    agreement = parity(model, to_onnx_bytes(model, contract), features, contract)

    assert contract.training.metric in metrics
    if contract_name == "iris":
        assert agreement["onnx_label_agreement"] == 1.0
    else:
        assert agreement["onnx_max_relative_difference"] < 1e-4


def test_the_same_data_trains_the_same_model(iris: DataContract) -> None:
    frame = datasets.iris_frame(200)
    features = training.features_of(frame, iris)
    first = training.build_model(iris).fit(features, frame["species"]).predict_proba(features)
    second = training.build_model(iris).fit(features, frame["species"]).predict_proba(features)
    assert (first == second).all()


def test_an_unknown_family_is_refused_with_the_contract_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="unknown model family 'quantum_forest'; known: random_forest"):
        TrainingSettings(family="quantum_forest")


def test_the_contracts_families_are_the_ones_the_trainer_builds() -> None:
    assert {family for _, family in training._FAMILIES} == set(FAMILIES)


MAXIMIZE = TrainingSettings(metric="f1_macro", direction="maximize", promotion_margin=0.01, floor=0.5)
MINIMIZE = TrainingSettings(metric="rmse", direction="minimize", promotion_margin=100, floor=50_000)


@pytest.mark.parametrize(
    ("settings", "challenger", "champion", "promote"),
    [
        (MAXIMIZE, 0.6, None, True),  # the first model only has to clear the floor
        (MAXIMIZE, 0.4, None, False),
        (MAXIMIZE, 0.9, 0.85, True),
        (MAXIMIZE, 0.855, 0.85, False),  # better, but not by the margin
        (MAXIMIZE, 0.8, 0.85, False),
        (MINIMIZE, 40_000, 45_000, True),
        (MINIMIZE, 44_950, 45_000, False),
        (MINIMIZE, 60_000, None, False),  # a minimised metric must stay under its floor
    ],
)
def test_the_gate(
    settings: TrainingSettings, challenger: float, champion: float | None, promote: bool
) -> None:
    decision = training.gate(settings, challenger, champion)
    assert decision.promote is promote
    assert decision.reason


def test_categorical_missing_values_become_their_own_category(houses: DataContract) -> None:
    frame = datasets.house_frame(50)
    features = training.features_of(frame, houses)
    assert features["heating"].isna().sum() == 0
    assert (features["heating"] == training.MISSING_CATEGORY).sum() == frame["heating"].isna().sum()
    assert isinstance(features["heating"].iloc[0], str)
    assert pd.api.types.is_float_dtype(features["year_built"])


def test_the_onnx_export_lists_its_opsets_in_a_fixed_order(iris: DataContract) -> None:
    # skl2onnx's own order differs between processes that imported things in another order (a stage
    # server's fork and a stage run alone); tests/unit/test_stage_server.py compares their bytes.
    import onnx

    frame = datasets.iris_frame(300)
    model = training.build_model(iris, {"n_estimators": 5})
    model.fit(training.features_of(frame, iris), frame[iris.target])
    domains = [opset.domain for opset in onnx.load_from_string(to_onnx_bytes(model, iris)).opset_import]
    assert domains == sorted(domains)
    assert len(domains) == 2


def test_a_version_is_servable_only_when_onnx_gives_every_label_or_value_within_tolerance(
    iris: DataContract, houses: DataContract
) -> None:
    from worker.onnx_export import REGRESSION_TOLERANCE, parity_problem

    assert parity_problem(iris, {"onnx_label_agreement": 1.0}) is None
    disagreeing = parity_problem(iris, {"onnx_label_agreement": 0.99})
    assert disagreeing is not None and "disagrees" in disagreeing
    assert parity_problem(iris, {}) is not None
    assert parity_problem(houses, {"onnx_max_relative_difference": REGRESSION_TOLERANCE / 2}) is None
    strays = parity_problem(houses, {"onnx_max_relative_difference": REGRESSION_TOLERANCE * 10})
    assert strays is not None and "tolerance" in strays
    assert parity_problem(houses, {"onnx_max_relative_difference": float("nan")}) is not None


def test_the_serving_check_holds_raw_records_and_scikit_learns_answers(houses: DataContract) -> None:
    from common.bundles import CheckRecords, Lineage
    from worker.onnx_export import serving_check
    from worker.serving_bundle import build_manifest

    frame = datasets.house_frame(300)
    model = training.build_model(houses, {"n_estimators": 10})
    features = training.features_of(frame, houses)
    model.fit(features, frame[houses.target])
    check = serving_check(model, frame, features, houses)
    assert len(check["records"]) == len(check["predictions"]) == 20
    assert set(check["records"][0]) == set(houses.features)
    missing = frame["heating"].head(20).isna()
    assert [record["heating"] is None for record in check["records"]] == missing.tolist()
    CheckRecords.model_validate(check)

    onnx_bytes = to_onnx_bytes(model, houses)
    manifest = build_manifest(
        houses,
        "7",
        onnx_bytes,
        check,
        {"rmse": 1.0, "onnx_max_relative_difference": 1e-7},
        Lineage(run_id="r", sources=[], content_hashes=[], accepted_list_hash="h", contract_hash="c"),
    )
    assert manifest.onnx.key == "bundles/houses/7/model.onnx"
    assert manifest.onnx.size_bytes == len(onnx_bytes)
    assert manifest.metrics == {"rmse": 1.0}
    assert manifest.parity == {"onnx_max_relative_difference": 1e-7}


def test_tied_votes_do_not_count_against_the_onnx_export_nor_enter_the_serving_check(
    iris: DataContract,
) -> None:
    import numpy as np

    from worker.onnx_export import decisive_rows, serving_check

    # GIVEN a two-tree forest on shuffled labels: many rows get one vote per class, a tie
    frame = datasets.iris_frame(400, seed=3)
    frame["species"] = frame["species"].sample(frac=1, random_state=1).to_numpy()
    model = training.build_model(iris, {"n_estimators": 2})
    features = training.features_of(frame, iris)
    model.fit(features, frame[iris.target])

    # WHEN ONNX and scikit-learn are compared
    measured = parity(model, to_onnx_bytes(model, iris), features, iris)
    check = serving_check(model, frame, features, iris)

    # THEN ties are counted apart, labels agree on every other row, and no tie is a check row
    assert measured["onnx_tied_rows"] > 0
    assert measured["onnx_label_agreement"] == 1.0
    probabilities = np.sort(np.asarray(check["probabilities"]), axis=1)
    assert (probabilities[:, -1] - probabilities[:, -2] > 1e-5).all()
    assert len(check["records"]) == 20
    assert not decisive_rows(model, features).all()


R2 = TrainingSettings(metric="r2", promotion_margin=0.0, floor=0.5)
RMSE_NO_FLOOR = TrainingSettings(metric="rmse")


@pytest.mark.parametrize("settings", [R2, RMSE_NO_FLOOR, MAXIMIZE, MINIMIZE])
@pytest.mark.parametrize("challenger", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("champion", [None, 0.9, 45_000])
def test_the_gate_never_promotes_a_challenger_whose_score_is_not_finite(
    settings: TrainingSettings, challenger: float, champion: float | None
) -> None:
    decision = training.gate(settings, challenger, champion)
    assert decision.promote is False
    assert f"{settings.metric} is {challenger}" in decision.reason
    assert "not a finite number" in decision.reason


@pytest.mark.parametrize("champion", [float("nan"), float("inf"), float("-inf")])
def test_a_champion_whose_score_is_not_finite_gives_way_only_to_a_challenger_that_clears_the_floor(
    champion: float,
) -> None:
    # GIVEN a champion that cannot be scored on this holdout (its predictions are not finite)
    # WHEN a challenger clears the floor, THEN it replaces the champion, and the reason says why
    replaced = training.gate(R2, 0.8, champion)
    assert replaced.promote is True
    assert f"the champion's r2 is {champion}" in replaced.reason
    # WHEN a challenger misses the floor, THEN the champion's missing score does not let it through
    refused = training.gate(R2, 0.3, champion)
    assert refused.promote is False
    assert "floor" in refused.reason


def test_every_metric_the_trainer_computes_has_a_direction() -> None:
    from common.contracts import METRIC_DIRECTIONS

    assert set(training.METRICS) == set(METRIC_DIRECTIONS)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 10])
def test_a_small_dataset_leaves_a_row_to_train_on_and_one_to_judge_with(fraction: float, rows: int) -> None:
    for seed in range(20):
        frame = datasets.iris_frame(rows, seed=seed)
        mask = training.holdout_mask(frame, fraction)
        assert (~mask).sum() >= 1  # something to fit
        assert mask.sum() >= (1 if rows >= 2 else 0)  # something to judge with, once there are 2 rows
        shuffled = frame.sample(frac=1, random_state=seed)
        assert (training.holdout_mask(shuffled, fraction) == mask[shuffled.index.to_numpy()]).all()


def _evaluate(workspace: Path, contract: DataContract, train: pd.DataFrame, holdout: pd.DataFrame) -> Any:
    import joblib
    import yaml
    from typer.testing import CliRunner

    from worker.stages import app

    (workspace / "data").mkdir(parents=True)
    (workspace / "model").mkdir()
    (workspace / "contract.yaml").write_text(yaml.safe_dump(contract.model_dump(mode="json")))
    holdout.to_parquet(workspace / "data" / "holdout.parquet", index=False)
    model = training.build_model(
        contract, {"n_estimators": 5} if contract.training.family == "random_forest" else {}
    )
    joblib.dump(
        model.fit(training.features_of(train, contract), train[contract.target]),
        workspace / "model" / "model.joblib",
    )
    return CliRunner().invoke(app, ["evaluate", "--workspace", str(workspace)])


def test_an_empty_holdout_gives_a_version_rejected_for_it_not_a_crash(
    iris: DataContract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.adapters import tracking
    from worker import train_model

    # GIVEN data of a single distinct row: it is all training data, and the holdout is empty
    frame = datasets.iris_frame(1)
    assert not training.holdout_mask(frame, 0.2).any()

    # WHEN the model is evaluated and judged
    result = _evaluate(tmp_path, iris, frame, frame.iloc[:0])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    serving = cast(tracking.ModelVersion, SimpleNamespace(name="iris", version="3"))
    monkeypatch.setattr(tracking, "champion", lambda name: serving)
    decision, champion, champion_metric = train_model._judge(
        SimpleNamespace(contract=iris),  # type: ignore[arg-type]
        metrics,
        pd.read_parquet(tmp_path / "data" / "holdout.parquet"),
    )

    # THEN it has no metric, and is rejected saying why and what to do
    assert iris.training.metric not in metrics
    assert decision.promote is False
    assert "the holdout is empty" in decision.reason
    assert "upload more data" in decision.reason
    assert champion is serving  # recorded with the decision, though it was not scored
    assert champion_metric is None


@pytest.mark.filterwarnings("ignore:R\\^2 score is not well-defined")
def test_a_metric_that_is_not_finite_stays_out_of_the_metrics_file(
    houses: DataContract, tmp_path: Path
) -> None:
    # GIVEN a regression judged by r2 on a holdout of one row, where r2 is undefined (NaN)
    r2 = houses.model_copy(update={"training": TrainingSettings(metric="r2", family="linear")})
    frame = datasets.house_frame(20)

    # WHEN it is evaluated
    result = _evaluate(tmp_path, r2, frame, frame.iloc[:1])

    # THEN metrics.json is plain JSON (NaN is not; EventBridge refuses it), without the undefined r2
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert "r2" not in metrics
    assert metrics["rmse"] >= 0


def test_a_holdout_of_only_tied_rows_proves_nothing_about_the_onnx_export(iris: DataContract) -> None:
    import numpy as np

    from worker.onnx_export import decisive_rows, parity_problem, serving_check

    # GIVEN a two-tree forest on shuffled labels, and a holdout of only the rows its votes tie on
    frame = datasets.iris_frame(400, seed=3)
    frame["species"] = frame["species"].sample(frac=1, random_state=1).to_numpy()
    model = training.build_model(iris, {"n_estimators": 2})
    model.fit(training.features_of(frame, iris), frame[iris.target])
    tied = frame[~decisive_rows(model, training.features_of(frame, iris))]
    features = training.features_of(tied, iris)
    assert len(tied) > 0

    # WHEN ONNX is checked on them
    measured = parity(model, to_onnx_bytes(model, iris), features, iris)
    check = serving_check(model, tied, features, iris)

    # THEN no row checks it: the version is not servable (serving refuses a bundle without check rows)
    assert check["records"] == [] and check["predictions"] == []
    problem = parity_problem(iris, measured)
    assert problem is not None and "nothing checked the ONNX export" in problem
    assert np.isclose(measured["onnx_tied_rows"], len(tied))


def _fitted(contract: DataContract, family: str, frame: pd.DataFrame) -> Any:
    contract = contract.model_copy(
        update={"training": contract.training.model_copy(update={"family": family, "params": {}})}
    )
    model = training.build_model(contract, {"n_estimators": 10})
    return model.fit(training.features_of(frame, contract), frame[contract.target])


@pytest.mark.parametrize("family", ["random_forest", "lightgbm", "gradient_boosting", "xgboost"])
def test_a_classifiers_labels_and_probabilities_are_what_it_predicts(iris: DataContract, family: str) -> None:
    frame = datasets.iris_frame(600, seed=3)
    model = _fitted(iris, family, frame)
    features = training.features_of(datasets.iris_frame(3000, seed=4), iris)

    answers = training.answers(model, features, iris.task)

    assert answers.predicted.tolist() == model.predict(features).tolist()
    assert answers.probabilities is not None
    assert (answers.probabilities == model.predict_proba(features)).all()


def test_a_classifier_whose_predict_is_its_own_is_asked_for_it(iris: DataContract) -> None:
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    class Cautious(RandomForestClassifier):  # type: ignore[misc]  # a rule of its own, not the argmax
        def predict(self, X: Any) -> Any:  # noqa: N803 (scikit-learn's)
            return np.full(len(X), self.classes_[0], dtype=object)

    frame = datasets.iris_frame(300)
    model = _fitted(iris, "random_forest", frame)
    model.steps[-1] = ("estimator", Cautious(n_estimators=5, random_state=0))
    features = training.features_of(frame, iris)
    model.fit(features, frame[iris.target])

    assert set(training.answers(model, features, iris.task).predicted) == {model.classes_[0]}


def test_classification_scores_are_scikit_learns_on_the_labels_to_the_last_bit(iris: DataContract) -> None:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    generator = np.random.default_rng(7)
    truth = pd.Series(generator.choice(["virginica", "setosa", "versicolor"], 5001)).astype("str")
    predicted = generator.choice(["setosa", "versicolor", "virginica", "unseen"], 5001).astype(object)

    scores = training.score(iris, truth, predicted)

    assert scores == {
        "accuracy": accuracy_score(truth, predicted),
        "f1_macro": f1_score(truth, predicted, average="macro"),
    }


def test_each_stage_notes_how_long_it_took(iris: DataContract, tmp_path: Path) -> None:
    from worker.workspace import stage_seconds

    frame = datasets.iris_frame(200)
    result = _evaluate(tmp_path, iris, frame, frame.iloc[:50])

    assert result.exit_code == 0, result.output
    assert set(stage_seconds(tmp_path)) == {"evaluate"}
    assert 0 < stage_seconds(tmp_path)["evaluate"] < 600
