"""Publishing a version's serving bundle (formats in
common/bundles.py). The bundle is built from files a training leaves in its workspace, or that its
MLflow run logged, so a trainer that died before publishing can be finished by the next one."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.adapters import s3
from common.bundles import (
    BundleManifest,
    CheckRecords,
    Lineage,
    OnnxModel,
    bundle_manifest_key,
    bundle_onnx_key,
)
from common.contracts import DataContract

PARITY_METRICS = ("onnx_label_agreement", "onnx_tied_rows", "onnx_max_relative_difference")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def build_manifest(
    contract: DataContract,
    version: str,
    onnx_bytes: bytes,
    check: dict[str, Any],
    metrics: dict[str, float],
    lineage: Lineage,
) -> BundleManifest:
    return BundleManifest(
        model=contract.model,
        version=version,
        created_at=_now(),
        contract=contract,
        onnx=OnnxModel(
            key=bundle_onnx_key(contract.model, version),
            sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            size_bytes=len(onnx_bytes),
            inputs=contract.features,
            classes=check.get("classes"),
        ),
        metrics={name: value for name, value in metrics.items() if name not in PARITY_METRICS},
        parity={name: value for name, value in metrics.items() if name in PARITY_METRICS},
        lineage=lineage,
        check=CheckRecords.model_validate(check),
    )


def publish_bundle(bucket: str, manifest: BundleManifest, onnx_bytes: bytes) -> str:
    """The ONNX model first, then the manifest that names it: a manifest never points at nothing.
    Returns the manifest's key."""
    s3.put_bytes(bucket, manifest.onnx.key, onnx_bytes)
    key = bundle_manifest_key(manifest.model, manifest.version)
    s3.put_bytes(bucket, key, manifest.model_dump_json(indent=2).encode(), "application/json")
    return key


def publish_from_directory(
    bucket: str,
    contract: DataContract,
    version: str,
    directory: Path,
    metrics: dict[str, float],
    lineage: Lineage,
) -> str:
    """From a directory holding `model.onnx` and `serving_check.json` (a workspace's `model/`, or a
    run's downloaded `onnx/` artifacts)."""
    onnx_bytes = (directory / "model.onnx").read_bytes()
    check = json.loads((directory / "serving_check.json").read_text())
    manifest = build_manifest(contract, version, onnx_bytes, check, metrics, lineage)
    return publish_bundle(bucket, manifest, onnx_bytes)
