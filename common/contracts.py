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
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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


class TrainingSettings(_Frozen):
    """How the trainer fits and judges this model (the training issue uses them)."""

    family: str = "random_forest"
    metric: str = "f1_macro"
    # Left out, it is the metric's own (filled in before validation): a fixed default would maximise
    # an error such as rmse and promote ever worse models.
    direction: Direction = "maximize"
    # Finite only: NaN compares false with every score, so a NaN floor or margin lets any model by.
    promotion_margin: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    floor: float | None = Field(default=None, allow_inf_nan=False)
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _direction_defaults_to_the_metrics_own(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("direction") is None:
            metric = data.get("metric", cls.model_fields["metric"].default)
            if metric in METRIC_DIRECTIONS:
                return {**data, "direction": METRIC_DIRECTIONS[metric]}
        return data

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


class DataContract(_Frozen):
    model: str
    task: Task
    target: str
    columns: dict[str, Column] = Field(min_length=2)
    limits: FileLimits = Field(default_factory=FileLimits)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

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

    @property
    def features(self) -> list[str]:
        return [name for name in self.columns if name != self.target]

    @property
    def content_hash(self) -> str:
        """Identifies exactly which rules a dataset was accepted under (recorded in its lineage)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_contract(text: str | bytes) -> DataContract:
    """Raises pydantic.ValidationError naming the field when the contract is malformed."""
    return DataContract.model_validate(yaml.safe_load(text))


def data_format_of(key: str) -> DataFormat | None:
    lowered = key.lower()
    for data_format in sorted(DataFormat, key=lambda fmt: -len(fmt.value)):
        if lowered.endswith(f".{data_format.value}"):
            return data_format
    return None
