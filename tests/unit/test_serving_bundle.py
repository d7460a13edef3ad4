"""A bundle serves only if it proves itself (common/bundle_loader.py), and then ONNX answers as
scikit-learn does, through serving's request schemas."""

from __future__ import annotations

import numpy as np
import pytest

from common.bundle_loader import BundleRejectedError, load_bundle
from common.contracts import Task
from serving.bundle import LoadedModel
from tests import serving_bundles
from tests.serving_bundles import Trained, manifest_of, pointer_to, request_records, sklearn_predictions

FAMILIES = ["random_forest", "gradient_boosting", "linear"]


def _load(model: Trained, version: str = "1", **manifest_changes: object) -> LoadedModel:
    manifest = manifest_of(model, version).model_copy(update=manifest_changes)
    return LoadedModel.of(load_bundle(pointer_to(manifest), manifest, model.onnx), max_batch=1000)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("base", ["iris", "house-prices"])
def test_onnx_answers_as_scikit_learn_does_for_every_family(base: str, family: str) -> None:
    # GIVEN a pipeline of this family, fitted and exported as the trainer does
    model = serving_bundles.trained(base, "parity", family)
    loaded = _load(model)
    # WHEN every training row, missing values included, goes through the request schema and ONNX
    records = loaded.schemas.validate_records(request_records(model.frame, model.contract), "records")
    predictions = loaded.predict(records)
    # THEN labels are equal, and values within 1e-4 relative
    expected = sklearn_predictions(model, model.frame)
    if model.contract.task is Task.classification:
        assert predictions.values.tolist() == expected
        assert predictions.probabilities is not None
        assert np.allclose(predictions.probabilities.sum(axis=1), 1, atol=1e-5)
    else:
        truth = np.asarray(expected)
        assert np.max(np.abs(predictions.values - truth) / np.maximum(np.abs(truth), 1)) <= 1e-4


def test_house_prices_rows_with_missing_values_are_answered_like_scikit_learn() -> None:
    model = serving_bundles.trained("house-prices", "houses")
    incomplete = model.frame[model.frame["year_built"].isna() | model.frame["heating"].isna()]
    assert len(incomplete) > 10
    records = request_records(incomplete, model.contract)
    # One way for each column to be missing: null, or left out (both nullable columns may be omitted).
    for record in records[::2]:
        for name in ("year_built", "heating"):
            if record[name] is None:
                del record[name]
    loaded = _load(model)
    predicted = loaded.predict(loaded.schemas.validate_records(records, "records")).values
    truth = np.asarray(sklearn_predictions(model, incomplete))
    assert np.max(np.abs(predicted - truth) / np.maximum(np.abs(truth), 1)) <= 1e-4


def test_a_bundle_whose_onnx_bytes_do_not_match_the_manifest_is_refused() -> None:
    model = serving_bundles.trained("iris", "iris")
    manifest = manifest_of(model, "1")
    with pytest.raises(BundleRejectedError, match="sha256"):
        load_bundle(pointer_to(manifest), manifest, model.onnx + b"\x00")


def test_a_classifier_whose_check_labels_differ_is_refused() -> None:
    model = serving_bundles.trained("iris", "iris")
    check = manifest_of(model, "1").check
    tampered = check.model_copy(update={"predictions": ["setosa" for _ in check.predictions]})
    assert tampered.predictions != check.predictions
    with pytest.raises(BundleRejectedError, match="disagrees with scikit-learn"):
        _load(model, check=tampered)


def test_a_regressor_outside_the_check_tolerance_is_refused() -> None:
    model = serving_bundles.trained("house-prices", "houses")
    check = manifest_of(model, "1").check
    tampered = check.model_copy(update={"predictions": [value * 1.01 for value in check.predictions]})
    with pytest.raises(BundleRejectedError, match="more than the tolerance"):
        _load(model, check=tampered)


def test_onnx_inputs_that_are_not_the_contracts_features_are_refused() -> None:
    model = serving_bundles.trained("iris", "iris")
    onnx = manifest_of(model, "1").onnx
    with pytest.raises(BundleRejectedError, match="not the contract's features"):
        _load(model, onnx=onnx.model_copy(update={"inputs": ["sepal_length"]}))


def test_a_bundle_without_check_records_proves_nothing_and_is_refused() -> None:
    model = serving_bundles.trained("iris", "iris")
    check = manifest_of(model, "1").check
    with pytest.raises(BundleRejectedError, match="nothing to prove"):
        _load(model, check=check.model_copy(update={"records": [], "predictions": []}))
