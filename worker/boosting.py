"""LightGBM and XGBoost as families of the trainer: their scikit-learn estimators, and the onnxmltools
converters that let skl2onnx export a pipeline ending in one. Imported only by a training that uses
them, or by an export that meets one: the two libraries take about 0.5 s to import."""

from __future__ import annotations

from typing import Any

import numpy as np
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.preprocessing import LabelEncoder
from xgboost import XGBClassifier, XGBRegressor

__all__ = ["LGBMClassifier", "LGBMRegressor", "XGBRegressor", "XGBoostClassifier", "register_converters"]


class XGBoostClassifier(XGBClassifier):
    """XGBClassifier for labels of any kind. XGBoost itself takes only 0..k-1 (it refuses ["no", "yes"]),
    so the labels are encoded for the fit and decoded by predict; `classes_` is the labels themselves,
    which the ONNX converter then writes into the graph, so ONNX answers "yes" as scikit-learn does."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> XGBoostClassifier:  # noqa: N803 (scikit-learn's)
        encoder = LabelEncoder().fit(y)
        # During XGBClassifier.fit, classes_ must be its own 0..k-1: it checks the encoded y against it.
        self.__dict__.pop("label_encoder_", None)
        super().fit(X, encoder.transform(y), **kwargs)
        self.label_encoder_ = encoder
        return self

    @property
    def classes_(self) -> np.ndarray:
        encoder = self.__dict__.get("label_encoder_")
        return encoder.classes_ if encoder is not None else np.arange(self.n_classes_)

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:  # noqa: N803 (scikit-learn's)
        encoded = super().predict(X, **kwargs)
        labels: np.ndarray = self.label_encoder_.inverse_transform(np.asarray(encoded, dtype=int))
        return labels


_registered = False


def register_converters() -> None:
    """Teach skl2onnx the four estimators (idempotent). skl2onnx converts a Pipeline step by step and
    knows only scikit-learn's own estimators; onnxmltools has the boosters' converters, registered here
    with skl2onnx's shape calculators for a classifier (label and probabilities) and a regressor."""
    global _registered
    if _registered:
        return
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import (  # type: ignore[import-untyped]
        convert_lightgbm,
    )
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import (  # type: ignore[import-untyped]
        convert_xgboost,
    )
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    for estimator, alias, converter in [
        (LGBMClassifier, "ArrivalLightGbmClassifier", convert_lightgbm),
        (XGBoostClassifier, "ArrivalXGBoostClassifier", convert_xgboost),
    ]:
        update_registered_converter(
            estimator, alias, calculate_linear_classifier_output_shapes, converter, options=classifier_options
        )
    update_registered_converter(
        LGBMRegressor,
        "ArrivalLightGbmRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
        options={"split": None},
    )
    update_registered_converter(
        XGBRegressor, "ArrivalXGBoostRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )
    _registered = True
