"""Exporting a fitted pipeline to ONNX (what the Lambda serving package will load) and checking that
it predicts what scikit-learn predicts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from common.contracts import CategoricalColumn, DataContract, Task


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
    onnx_model = to_onnx(model, initial_types=inputs, options=options, target_opset=17)
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


def parity(
    model: Pipeline, model_bytes: bytes, features: pd.DataFrame, contract: DataContract
) -> dict[str, float]:
    """How far ONNX strays from scikit-learn on these rows: share of equal labels for a classifier,
    the largest relative difference for a regressor (ONNX computes in float32)."""
    expected = model.predict(features)
    actual = onnx_predict(model_bytes, features, contract)
    if contract.task is Task.classification:
        return {"onnx_label_agreement": float(np.mean(expected.astype(str) == actual.astype(str)))}
    scale = np.maximum(np.abs(expected), 1.0)
    return {"onnx_max_relative_difference": float(np.max(np.abs(expected - actual) / scale))}
