"""Exporting a fitted pipeline to ONNX (what the Lambda serving package will load) and checking that
it predicts what scikit-learn predicts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from common.contracts import CategoricalColumn, DataContract, Task
from worker import training
from worker.training import Answers


def to_onnx_bytes(model: Pipeline, contract: DataContract) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    # One input per column: the ColumnTransformer picks columns by name.
    inputs = [
        (
            name,
            StringTensorType([None, 1])
            if isinstance(contract.columns[name], CategoricalColumn)
            else FloatTensorType([None, 1]),
        )
        for name in contract.features
    ]
    options = {id(model.steps[-1][1]): {"zipmap": False}} if contract.task is Task.classification else None
    opset: int | dict[str, int] = 17
    # A pipeline holding a booster anywhere (a recipe may nest one) has had its library imported.
    if "lightgbm" in sys.modules or "xgboost" in sys.modules:
        from worker.boosting import register_converters

        register_converters()
        # The tree ensembles onnxmltools writes need ai.onnx.ml 3; the other families keep their bytes.
        opset = {"": 17, "ai.onnx.ml": 3}
    onnx_model = to_onnx(model, initial_types=inputs, options=options, target_opset=opset)
    # skl2onnx's order of the opset imports depends on what the process imported before (a stage
    # server's fork and a stage run alone differ); in a fixed order the same model gives the same
    # bytes, so DVC sees a rerun's output as unchanged.
    imports = sorted(onnx_model.opset_import, key=lambda opset: opset.domain)
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(imports)
    return bytes(onnx_model.SerializeToString())


def onnx_inputs(features: pd.DataFrame, contract: DataContract) -> dict[str, np.ndarray]:
    return {
        name: (
            features[name].astype(str).to_numpy().reshape(-1, 1)
            if isinstance(contract.columns[name], CategoricalColumn)
            else features[name].to_numpy(dtype=np.float32).reshape(-1, 1)
        )
        for name in contract.features
    }


def onnx_predict(model_bytes: bytes, features: pd.DataFrame, contract: DataContract) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    outputs: list[Any] = session.run(None, onnx_inputs(features, contract))
    return np.asarray(outputs[0]).reshape(-1)


def decisive_rows(
    model: Pipeline, features: pd.DataFrame, probabilities: np.ndarray | None = None
) -> np.ndarray:
    """True where a classifier's top two class probabilities differ by more than TIE_MARGIN. On a
    tie (a forest's votes split evenly) scikit-learn's float64 and ONNX's float32 may each pick
    another of the equally likely classes: neither label is wrong, so such rows do not count.
    `probabilities`: the model's for these rows, if already computed."""
    if probabilities is None:
        probabilities = model.predict_proba(features)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    decisive: np.ndarray = (top_two[:, 1] - top_two[:, 0]) > TIE_MARGIN
    return decisive


def parity(
    model: Pipeline,
    model_bytes: bytes,
    features: pd.DataFrame,
    contract: DataContract,
    expected: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> dict[str, float]:
    """How far ONNX strays from scikit-learn on these rows: the share of equal labels for a classifier
    (on rows that are not ties, whose count is reported too), the largest relative difference for a
    regressor (ONNX computes in float32). Without a row that can tell, the measure is left out, and
    the version is not servable (parity_problem): serving refuses a bundle with no check rows.
    `expected` and `probabilities`: the model's answers for these rows, if already computed (on a
    large holdout each costs seconds)."""
    if features.empty:
        return {}
    if expected is None:
        expected = model.predict(features)
    actual = onnx_predict(model_bytes, features, contract)
    if contract.task is Task.classification:
        decisive = decisive_rows(model, features, probabilities)
        agrees = expected.astype(str) == actual.astype(str)
        tied = {"onnx_tied_rows": float((~decisive).sum())}
        return {"onnx_label_agreement": float(np.mean(agrees[decisive])), **tied} if decisive.any() else tied
    scale = np.maximum(np.abs(expected), 1.0)
    return {"onnx_max_relative_difference": float(np.max(np.abs(expected - actual) / scale))}


# How far ONNX may stray from scikit-learn before a version is refused as unservable: no label may
# differ, and a regression value may differ by at most this much, relative (ONNX computes in float32,
# whose own precision is about 6e-8; sums over hundreds of trees stay well inside 1e-4).
REGRESSION_TOLERANCE = 1e-4
# Class probabilities closer than this are a tie: float32 sums of a forest's votes differ from float64
# ones by far less, and a real preference by far more.
TIE_MARGIN = 1e-5
CHECK_ROWS = 20


@dataclass(frozen=True)
class Exported:
    """A fitted pipeline's ONNX export, checked: its bytes (empty if it did not convert), how far it
    strays from scikit-learn, the bundle's check rows, and why it cannot serve, if it cannot."""

    onnx_bytes: bytes
    parity: dict[str, float]
    check: dict[str, Any]
    problem: str | None


def export(
    model: Pipeline,
    raw_rows: pd.DataFrame,
    features: pd.DataFrame,
    contract: DataContract,
    answers: Answers | None = None,
) -> Exported:
    """Convert, then run the export on the holdout: a pipeline that converts can still fail in ONNX
    Runtime (skl2onnx 1.20's SimpleImputer(add_indicator=True) indexes out of range). Either failure
    makes the version not servable, with the converter's or the runtime's own words, rather than
    failing the training: the gate rejects it, and the champion keeps serving. `answers`: the
    model's for `features`, if already computed (training.answers)."""
    try:
        onnx_bytes = to_onnx_bytes(model, contract)
    except Exception as error:
        problem = f"the pipeline does not convert to ONNX ({type(error).__name__}: {_one_line(error)})"
        return Exported(b"", {}, serving_check(model, raw_rows.head(0), features.head(0), contract), problem)
    try:
        # Once, for both: on 200,000 holdout rows a LightGBM's probabilities take 0.7 s.
        answers = answers or training.answers(model, features, contract.task)
        measured = parity(model, onnx_bytes, features, contract, answers.predicted, answers.probabilities)
        check = serving_check(model, raw_rows, features, contract, answers.probabilities)
    except Exception as error:
        problem = f"the ONNX export fails when run ({type(error).__name__}: {_one_line(error)})"
        return Exported(
            onnx_bytes, {}, serving_check(model, raw_rows.head(0), features.head(0), contract), problem
        )
    return Exported(onnx_bytes, measured, check, None)


def _one_line(error: BaseException, limit: int = 600) -> str:
    return " ".join(str(error).split())[:limit]


def parity_problem(contract: DataContract, parity_metrics: dict[str, float]) -> str | None:
    """Why the ONNX export cannot serve this version, or None if it can."""
    measure = (
        "onnx_label_agreement" if contract.task is Task.classification else "onnx_max_relative_difference"
    )
    if measure not in parity_metrics:
        return (
            f"nothing checked the ONNX export against scikit-learn ({measure} is missing: the holdout "
            "has no row that is not a tie, or the measure is not a number)"
        )
    if contract.task is Task.classification:
        agreement = parity_metrics[measure]
        if not agreement >= 1.0:
            return f"the ONNX export disagrees with scikit-learn on holdout labels (agreement {agreement})"
        return None
    difference = parity_metrics[measure]
    if not difference <= REGRESSION_TOLERANCE:
        return (
            f"the ONNX export strays from scikit-learn by {difference} (relative) on the holdout, "
            f"over the tolerance {REGRESSION_TOLERANCE}"
        )
    return None


def serving_check(
    model: Pipeline,
    raw_rows: pd.DataFrame,
    features: pd.DataFrame,
    contract: DataContract,
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """Rows as a client would send them (None for a missing value) with scikit-learn's answers: the
    serving bundle carries them, and serving refuses a bundle whose ONNX model does not give them."""
    check: dict[str, Any] = {
        "records": [],
        "predictions": [],
        "tolerance": REGRESSION_TOLERANCE,
        "classes": None,
        "probabilities": None,
    }
    # Ties would fail a faithful ONNX model's check.
    if contract.task is Task.classification and not features.empty:
        decisive = decisive_rows(model, features, probabilities)
        raw_rows, features = raw_rows[decisive], features[decisive]
    if features.empty:  # scikit-learn refuses to predict no rows; parity_problem says why it cannot serve
        return check
    rows = raw_rows[contract.features].head(CHECK_ROWS)
    check["records"] = [
        {name: (None if pd.isna(value) else value) for name, value in record.items()}
        for record in rows.astype(object).to_dict(orient="records")
    ]
    check["predictions"] = model.predict(features.head(CHECK_ROWS)).tolist()
    if contract.task is Task.classification:
        check["classes"] = model.classes_.tolist()
        check["probabilities"] = model.predict_proba(features.head(CHECK_ROWS)).tolist()
    return check
