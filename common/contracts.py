"""Data contracts: what one model accepts as training data, and how it is trained.

A contract is a YAML document, ``<model>.yaml``, kept in the config bucket so a new model is added
by uploading one file. The contract, not code, decides what is learned: any tabular classification
or regression dataset works given its contract.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class Task(StrEnum):
    classification = "classification"
    regression = "regression"


class DataFormat(StrEnum):
    csv = "csv"
    csv_gz = "csv.gz"
    parquet = "parquet"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NumericColumn(_Frozen):
    type: Literal["numeric"]
    min: float | None = None
    max: float | None = None
    nullable: bool = False


class CategoricalColumn(_Frozen):
    type: Literal["categorical"]
    categories: list[str] = Field(min_length=1)
    nullable: bool = False

    @field_validator("categories", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, categories: Any) -> Any:
        # YAML 1.1 reads an unquoted yes, no, on, off, true or false as a boolean: `[no, yes]` arrives
        # as [False, True], and which spelling was meant is lost, so it is refused with the fix.
        if isinstance(categories, list) and any(isinstance(value, bool) for value in categories):
            raise ValueError(
                f"categories {categories} hold booleans: YAML reads an unquoted yes, no, on, off, true or "
                'false as one; quote each category, as in categories: ["no", "yes"]'
            )
        return categories


Column = Annotated[NumericColumn | CategoricalColumn, Field(discriminator="type")]


class FileLimits(_Frozen):
    min_rows: int = Field(default=10, ge=1)
    max_file_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    formats: list[DataFormat] = Field(default_factory=lambda: list(DataFormat))
    na_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    delimiter: str = Field(default=",", min_length=1, max_length=1)


Direction = Literal["maximize", "minimize"]

# Whether a higher or a lower score is better, for each metric the trainer computes
# (worker/training.py's METRICS; a unit test keeps the two in step).
METRIC_DIRECTIONS: dict[str, Direction] = {
    "accuracy": "maximize",
    "f1_macro": "maximize",
    "r2": "maximize",
    "rmse": "minimize",
    "mae": "minimize",
}


# The estimators the trainer builds without a recipe (worker/training.py's _FAMILIES; a unit test
# keeps the two in step). Checked here so that `contract check` and `contract put` refuse a typo
# before anything trains.
FAMILIES = ("random_forest", "gradient_boosting", "linear", "lightgbm", "xgboost")
# What a version records as its recipe's hash when the built-in pipeline made it (worker/recipes.py).
BUILT_IN_RECIPE = "built-in"


class SearchRange(_Frozen):
    """A number between low and high: an integer when both are integers; `log` samples its scale."""

    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _low_below_high(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0; got {self.low}")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


class SearchChoice(_Frozen):
    choices: list[int | float | str | bool] = Field(min_length=1)


class Search(_Frozen):
    """training.search: tune the estimator's parameters (Optuna, seeded) before the gate judges it.
    Each trial fits on part of the training rows and is scored on the rest; the holdout the gate uses
    is never seen. The best trial's parameters are then fitted on all the training rows."""

    trials: int = Field(default=20, ge=1, le=1000)
    # A time budget ends the search early: the model then depends on how fast the trainer was, so
    # `arrival reproduce` matches it only when the trials, not the budget, ended the search.
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    space: dict[str, SearchRange | SearchChoice] = Field(min_length=1)


class TrainingSettings(_Frozen):
    """How the trainer fits and judges this model (the training issue uses them)."""

    family: str = "random_forest"
    # A team's own preprocessing and estimator: a .py file beside the contract, relative to it, that
    # defines build_pipeline(params) (docs/training.md). `arrival contract put` uploads it too.
    recipe: str | None = None
    metric: str = "f1_macro"
    # Left out, it is the metric's own (filled in before validation): a fixed default would maximise
    # an error such as rmse and promote ever worse models.
    direction: Direction = "maximize"
    # Finite only: NaN compares false with every score, so a NaN floor or margin lets any model by.
    promotion_margin: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    floor: float | None = Field(default=None, allow_inf_nan=False)
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    # manual: a version the gate passes waits for `arrival approve` instead of being promoted.
    approval: Literal["auto", "manual"] = "auto"
    search: Search | None = None

    @model_validator(mode="before")
    @classmethod
    def _direction_defaults_to_the_metrics_own(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("direction") is None:
            metric = data.get("metric", cls.model_fields["metric"].default)
            if metric in METRIC_DIRECTIONS:
                return {**data, "direction": METRIC_DIRECTIONS[metric]}
        return data

    @field_validator("family")
    @classmethod
    def _family_is_known(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(
                f"unknown model family {family!r}; known: {', '.join(FAMILIES)}, or a recipe of your own "
                "(training.recipe)"
            )
        return family

    @field_validator("recipe")
    @classmethod
    def _recipe_is_a_python_file_beside_the_contract(cls, recipe: str | None) -> str | None:
        if recipe is None:
            return None
        path = PurePosixPath(recipe)
        if path.suffix != ".py" or path.is_absolute() or ".." in path.parts:
            raise ValueError(
                f"training.recipe {recipe!r} must be a .py file given relative to the contract file, "
                "inside its folder (no leading / and no ..)"
            )
        return recipe

    @model_serializer(mode="wrap")
    def _without_a_family_beside_a_recipe(self, handler: SerializerFunctionWrapHandler) -> Any:
        # With a recipe, the default family means nothing; written out, it would read as set when the
        # document is validated again (a bundle's manifest carries its contract).
        data = handler(self)
        if self.recipe is not None and isinstance(data, dict):
            data.pop("family", None)
        return data

    @model_validator(mode="after")
    def _a_recipe_builds_its_own_estimator(self) -> Self:
        if self.recipe is not None and "family" in self.model_fields_set:
            raise ValueError(
                "training.family and training.recipe exclude each other: the recipe's build_pipeline "
                "builds the estimator; drop family"
            )
        return self

    @field_validator("metric")
    @classmethod
    def _metric_is_known(cls, metric: str) -> str:
        if metric not in METRIC_DIRECTIONS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRIC_DIRECTIONS))}")
        return metric

    @field_validator("direction")
    @classmethod
    def _direction_agrees_with_the_metric(cls, direction: Direction, info: ValidationInfo) -> Direction:
        metric = info.data.get("metric")  # absent when the metric itself was refused
        expected = METRIC_DIRECTIONS.get(metric) if isinstance(metric, str) else None
        if expected is not None and direction != expected:
            better = "higher" if expected == "maximize" else "lower"
            raise ValueError(
                f"training.direction {direction!r} contradicts the metric {metric!r}: a {better} "
                f"{metric} is better; set direction: {expected}, or leave it out"
            )
        return direction


class DriftMethod(StrEnum):
    """How common/drift.py compares a column. `ks` and `chi2` are tests, drifted below a p-value;
    `psi`, `jensenshannon` and `wasserstein` (in reference standard deviations) are distances,
    drifted at or above a score."""

    ks = "ks"
    chi2 = "chi2"
    psi = "psi"
    jensenshannon = "jensenshannon"
    wasserstein = "wasserstein"


NUMERIC_ONLY_METHODS = frozenset({DriftMethod.ks, DriftMethod.wasserstein})
CATEGORICAL_ONLY_METHODS = frozenset({DriftMethod.chi2})
# A p-value and a Jensen-Shannon distance (base 2) lie in [0, 1]; PSI and Wasserstein are unbounded.
BOUNDED_METHODS = frozenset({DriftMethod.ks, DriftMethod.chi2, DriftMethod.jensenshannon})


class ColumnMonitoring(_Frozen):
    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class Monitoring(_Frozen):
    """How drift is watched (issue 11). Left out, every column gets the method its type and sample
    size call for (common/drift.py) and that method's usual threshold."""

    sample_rate: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)
    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    columns: dict[str, ColumnMonitoring] = Field(default_factory=dict)

    def setting_for(self, column: str) -> tuple[DriftMethod | None, float | None]:
        """The column's method and threshold; None where the defaults decide. A column given its
        own method does not take the section's threshold, which was meant for another method."""
        own = self.columns.get(column, ColumnMonitoring())
        if own.method is not None and own.method != self.method:
            return own.method, own.threshold
        return self.method, own.threshold or self.threshold


class DataContract(_Frozen):
    model: str
    task: Task
    target: str
    columns: dict[str, Column] = Field(min_length=2)
    limits: FileLimits = Field(default_factory=FileLimits)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    monitoring: Monitoring = Field(default_factory=Monitoring)

    @model_validator(mode="after")
    def _target_is_a_column_of_the_right_kind(self) -> Self:
        if not MODEL_NAME.match(self.model):
            raise ValueError(f"model name {self.model!r} must be lowercase letters, digits and '-'")
        if self.target not in self.columns:
            raise ValueError(f"target {self.target!r} is not one of the columns")
        target = self.columns[self.target]
        if self.task is Task.regression and not isinstance(target, NumericColumn):
            raise ValueError(f"a regression target must be numeric; {self.target!r} is categorical")
        if target.nullable:
            raise ValueError(f"the target {self.target!r} cannot be nullable")
        return self

    @model_validator(mode="after")
    def _monitoring_fits_the_columns(self) -> Self:
        monitoring = self.monitoring
        for name in monitoring.columns:
            if name not in self.columns:
                raise ValueError(
                    f"monitoring.columns: unknown column {name!r}; the columns are {', '.join(self.columns)}"
                )
            method, threshold = monitoring.setting_for(name)
            where = f"monitoring.columns.{name}"
            _check_drift_method(where, method, self.columns[name])
            _check_drift_threshold(where, method, threshold)
        if monitoring.method is not None:
            for name, column in self.columns.items():
                if name not in monitoring.columns or monitoring.columns[name].method is None:
                    _check_drift_method(f"monitoring.method (column {name!r})", monitoring.method, column)
        _check_drift_threshold("monitoring.threshold", monitoring.method, monitoring.threshold)
        return self

    @property
    def features(self) -> list[str]:
        return [name for name in self.columns if name != self.target]

    @property
    def content_hash(self) -> str:
        """Identifies exactly which rules a dataset was accepted under (recorded in its lineage)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _check_drift_method(where: str, method: DriftMethod | None, column: Column) -> None:
    if method in NUMERIC_ONLY_METHODS and isinstance(column, CategoricalColumn):
        raise ValueError(f"{where}: {method} compares numbers; this column is categorical")
    if method in CATEGORICAL_ONLY_METHODS and isinstance(column, NumericColumn):
        raise ValueError(f"{where}: {method} compares categories; this column is numeric")


def _check_drift_threshold(where: str, method: DriftMethod | None, threshold: float | None) -> None:
    if threshold is not None and method is None:
        # Without a method the column's is chosen by its sample size: a p-value or a distance.
        raise ValueError(f"{where}: a threshold needs a method (ks, chi2, psi, jensenshannon, wasserstein)")
    if threshold is not None and method in BOUNDED_METHODS and threshold > 1:
        raise ValueError(f"{where}: a {method} threshold lies in (0, 1]; got {threshold}")


def parse_contract(text: str | bytes) -> DataContract:
    """Raises pydantic.ValidationError naming the field when the contract is malformed."""
    return DataContract.model_validate(yaml.safe_load(text))


def data_format_of(key: str) -> DataFormat | None:
    lowered = key.lower()
    for data_format in sorted(DataFormat, key=lambda fmt: -len(fmt.value)):
        if lowered.endswith(f".{data_format.value}"):
            return data_format
    return None
