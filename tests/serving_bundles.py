"""Real serving bundles for tests: a small scikit-learn pipeline fitted as the trainer fits it, exported
to ONNX, with a manifest and check records, written to a (moto) bucket with common.bundles' keys."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
import pandas as pd
from moto import mock_aws
from sklearn.pipeline import Pipeline

from common.adapters import s3, sns, sqs
from common.bundles import (
    MISSING_CATEGORY,
    BundleManifest,
    CheckRecords,
    Lineage,
    OnnxModel,
    ServingPointer,
    bundle_manifest_key,
    bundle_onnx_key,
    pointer_key,
)
from common.contracts import DataContract, Task, parse_contract
from serving.settings import get_serving_settings
from tests import datasets
from worker.onnx_export import to_onnx_bytes
from worker.training import build_model, features_of

MODELS_BUCKET = "unit-models"
# Small but real: fast to fit, still several trees deep.
_FAST_PARAMS = {
    "random_forest": {"n_estimators": 10},
    "gradient_boosting": {"n_estimators": 20},
    "linear": {},
}


@dataclass(frozen=True)
class Trained:
    contract: DataContract
    pipeline: Pipeline
    onnx: bytes
    frame: pd.DataFrame


def contract_for(base: str, model: str, family: str | None = None) -> DataContract:
    contract = parse_contract(datasets.contract_yaml(base, model))
    if family is None:
        return contract
    document = contract.model_dump(mode="json")
    document["training"]["family"] = family
    return DataContract.model_validate(document)


@cache
def trained(base: str, model: str, family: str | None = None) -> Trained:
    """`base` is an example contract (iris, house-prices), renamed `model`; cached per test session."""
    contract = contract_for(base, model, family)
    frame = datasets.iris_frame(200) if base == "iris" else datasets.house_frame(300)
    pipeline = build_model(contract, _FAST_PARAMS[contract.training.family])
    pipeline.fit(features_of(frame, contract), frame[contract.target])
    return Trained(contract, pipeline, to_onnx_bytes(pipeline, contract), frame)


def request_records(frame: pd.DataFrame, contract: DataContract) -> list[dict[str, Any]]:
    """Rows as a client sends them: missing values are null (None), never NaN or a placeholder."""
    rows = features_of(frame, contract).to_dict("records")
    return [{str(name): None if _missing(value) else value for name, value in row.items()} for row in rows]


def _missing(value: Any) -> bool:
    return value is None or value == MISSING_CATEGORY or (isinstance(value, float) and math.isnan(value))


def sklearn_predictions(model: Trained, frame: pd.DataFrame) -> list[Any]:
    return list(model.pipeline.predict(features_of(frame, model.contract)).tolist())


def manifest_of(model: Trained, version: str, *, check_rows: int = 25) -> BundleManifest:
    contract, checked = model.contract, model.frame.head(check_rows)
    name = contract.model
    classes = model.pipeline.classes_.tolist() if contract.task is Task.classification else None
    return BundleManifest(
        model=name,
        version=version,
        created_at="2026-11-27T12:00:00Z",
        contract=contract,
        onnx=OnnxModel(
            key=bundle_onnx_key(name, version),
            sha256=hashlib.sha256(model.onnx).hexdigest(),
            size_bytes=len(model.onnx),
            inputs=contract.features,
            classes=classes,
        ),
        metrics={contract.training.metric: 0.9},
        lineage=Lineage(
            run_id=f"run-{name}-{version}",
            sources=[f"s3://raw/{name}/part-1.csv", f"s3://raw/{name}/part-2.csv"],
            content_hashes=["a" * 64, "b" * 64],
            accepted_list_hash="c" * 64,
            contract_hash=contract.content_hash,
            dvc_lock="schema: '2.0'\nstages: {}\n",
        ),
        check=CheckRecords(
            records=request_records(checked, contract),
            predictions=sklearn_predictions(model, checked),
            tolerance=1e-4,
        ),
    )


def pointer_to(manifest: BundleManifest, promoted_at: str = "2026-11-27T12:00:00Z") -> ServingPointer:
    return ServingPointer(
        model=manifest.model,
        version=manifest.version,
        manifest_key=bundle_manifest_key(manifest.model, manifest.version),
        promoted_at=promoted_at,
        reason="beats the champion",
    )


def publish(
    s3_client: Any,
    model: Trained,
    version: str,
    *,
    manifest: BundleManifest | None = None,
    onnx: bytes | None = None,
    bucket: str = MODELS_BUCKET,
    promoted_at: str = "2026-11-27T12:00:00Z",
) -> BundleManifest:
    """Write the bundle, then move the pointer to it (as the trainer does on promotion)."""
    manifest = manifest or manifest_of(model, version)
    name = model.contract.model
    s3_client.put_object(Bucket=bucket, Key=manifest.onnx.key, Body=onnx if onnx is not None else model.onnx)
    s3_client.put_object(
        Bucket=bucket, Key=bundle_manifest_key(name, version), Body=manifest.model_dump_json()
    )
    pointer = pointer_to(manifest, promoted_at)
    s3_client.put_object(Bucket=bucket, Key=pointer_key(name), Body=pointer.model_dump_json())
    return manifest


@contextmanager
def models_bucket() -> Iterator[Any]:
    """A moto S3 with the models bucket, and arrival's cached clients and settings forgotten."""
    for cached in (s3.s3_client, sqs.sqs_client, sns.sns_client, get_serving_settings):
        cached.cache_clear()
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=MODELS_BUCKET)
        yield client
    for cached in (s3.s3_client, sqs.sqs_client, sns.sns_client, get_serving_settings):
        cached.cache_clear()
