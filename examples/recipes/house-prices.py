"""A recipe for the house-prices contract: the team's own features and estimator.

The trainer calls build_pipeline(params) with the contract's training.params, fits what it returns on
a pandas DataFrame of the contract's feature columns (numbers as floats with NaN for a missing value,
categories as strings with "__missing__" for one), exports the fitted pipeline to ONNX and checks
that the export answers as it does. Select columns by name in a ColumnTransformer: the ONNX model
takes one input per feature.
"""

from lightgbm import LGBMRegressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures

NUMERIC = ["area_m2", "rooms", "year_built"]
CATEGORICAL = ["district", "heating"]


def build_pipeline(params: dict) -> Pipeline:
    numeric = Pipeline(
        [
            # A house whose year is unknown is taken for an old one, not for the median.
            ("impute", SimpleImputer(strategy="constant", fill_value=1950.0)),
            # area x rooms (the size of a room), area x year, rooms x year.
            ("interactions", PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [
            ("numeric", numeric, NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
        ],
        sparse_threshold=0,
    )
    estimator = LGBMRegressor(
        n_estimators=int(params.get("n_estimators", 100)),
        learning_rate=float(params.get("learning_rate", 0.1)),
        # The same model from the same data: `arrival reproduce` matches its metrics.
        deterministic=True,
        force_row_wise=True,
        random_state=0,
        n_jobs=2,
        verbose=-1,
    )
    return Pipeline([("preprocess", preprocess), ("estimator", estimator)])
