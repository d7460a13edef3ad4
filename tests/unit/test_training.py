from __future__ import annotations

import pandas as pd
import pytest

from common.contracts import DataContract, TrainingSettings, parse_contract
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


def test_an_unknown_family_is_named(iris: DataContract) -> None:
    broken = iris.model_copy(update={"training": TrainingSettings(family="quantum_forest")})
    with pytest.raises(training.UnknownFamilyError, match="quantum_forest"):
        training.build_model(broken)


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
