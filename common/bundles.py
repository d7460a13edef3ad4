"""The serving bundle: everything serving needs to answer for one model version, self-contained in S3,
so serving never needs MLflow, scikit-learn or pandas (and keeps working while MLflow is down).

In the stack's models bucket:
- ``bundles/<model>/<version>/model.onnx``: the ONNX export of the fitted pipeline;
- ``bundles/<model>/<version>/bundle.json``: a ``BundleManifest`` (the contract, metrics, lineage,
  and check records with scikit-learn's own predictions, which a loader must reproduce);
- ``pointers/<model>.json``: a ``ServingPointer`` naming the bundle serving must answer with. It is
  the champion's commit point: common/champion.py writes it conditionally, then moves the registry's
  ``champion`` alias after it, and ``arrival status`` reports any model whose two disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.contracts import BUILT_IN_RECIPE, MODEL_NAME, DataContract

BUNDLE_FORMAT = 1
POINTERS_PREFIX = "pointers/"
# A missing categorical value reaches the model as a category of its own (training and serving agree).
MISSING_CATEGORY = "__missing__"


def bundle_prefix(model: str, version: str) -> str:
    return f"bundles/{model}/{version}/"


def bundle_manifest_key(model: str, version: str) -> str:
    return f"{bundle_prefix(model, version)}bundle.json"


def bundle_onnx_key(model: str, version: str) -> str:
    return f"{bundle_prefix(model, version)}model.onnx"


def pointer_key(model: str) -> str:
    return f"{POINTERS_PREFIX}{model}.json"


def model_of_pointer_key(key: str) -> str | None:
    """The model a key under pointers/ is the pointer of; None for any other key (a copy such as
    `iris.json.bak`, a folder, a name no contract may have)."""
    if not key.startswith(POINTERS_PREFIX) or not key.endswith(".json"):
        return None
    name = key.removeprefix(POINTERS_PREFIX).removesuffix(".json")
    return name if MODEL_NAME.fullmatch(name) else None


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class OnnxModel(_Document):
    key: str
    sha256: str
    size_bytes: int
    # ONNX inputs are one [N, 1] tensor per feature: float32 for numeric, string for categorical.
    inputs: list[str]
    # Classification: output 0 is the label, output 1 the probabilities in the order of `classes`.
    # Regression: output 0 is the prediction.
    classes: list[Any] | None = None


class CheckRecords(_Document):
    """Holdout rows with scikit-learn's answers for them: a loader runs them through ONNX and refuses
    the bundle unless labels are equal (classification) or values are within `tolerance` (relative, for
    regression; ONNX computes in float32)."""

    records: list[dict[str, Any]]
    predictions: list[Any]
    probabilities: list[list[float]] | None = None
    tolerance: float


class Lineage(_Document):
    run_id: str
    sources: list[str]
    content_hashes: list[str]
    accepted_list_hash: str
    contract_hash: str
    dvc_lock: str = ""
    # The recipe that built the pipeline (its path in the contract, and its SHA-256), or the built-in.
    recipe: str = BUILT_IN_RECIPE
    recipe_hash: str = BUILT_IN_RECIPE


class BundleManifest(_Document):
    format: int = BUNDLE_FORMAT
    model: str
    version: str
    created_at: str
    contract: DataContract
    onnx: OnnxModel
    metrics: dict[str, float]
    lineage: Lineage
    check: CheckRecords
    parity: dict[str, float] = Field(default_factory=dict)


ChangeKind = Literal["promotion", "approval", "rollback", "repair"]


class ChampionChange(_Document):
    """What made the pointer's version the champion, so whoever finds the change cut short can
    finish it from the pointer alone (common/champion.py)."""

    kind: ChangeKind
    # The version served before (None for a model's first champion).
    from_version: str | None = None
    reason: str = ""


class ServingPointer(_Document):
    model: str
    version: str
    manifest_key: str
    promoted_at: str
    reason: str = ""
    # Counts the pointer's changes; a pointer written before changes were recorded has 0 and no change.
    generation: int = 0
    change: ChampionChange | None = None
