"""One serving bundle, read from the models bucket, loaded and proven: the ONNX bytes match the
manifest's hash, and the session reproduces scikit-learn's answers on the bundle's check records before
it may answer. Both of its users load bundles through here: serving (serving/store.py, which adds each
model's request schemas) and batch scoring (common/batch.py); it imports neither."""

from __future__ import annotations

import hashlib
import json
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnxruntime

from common.adapters import s3
from common.bundles import MISSING_CATEGORY, BundleManifest, ServingPointer
from common.contracts import CategoricalColumn, DataContract, Task


class BundleRejectedError(Exception):
    """The bundle itself is wrong (hash, inputs, check records): retrying the same pointer cannot help."""


class BundleMissingError(Exception):
    """A file the pointer leads to is not in the bucket (yet): a pointer can become visible before its
    bundle, or name one still being written, so the same pointer may load later."""


class InputBuilder:
    """Records -> one [N, 1] tensor per feature, encoded as at training: numeric as float32 (None is
    NaN), categorical as strings (None is MISSING_CATEGORY)."""

    def __init__(self, contract: DataContract) -> None:
        features, columns = contract.features, contract.columns
        categorical = {n for n in features if isinstance(columns[n], CategoricalColumn)}
        numeric = [n for n in features if n not in categorical]
        # Numbers every valid record has are taken in one C-level call per record, into one block.
        self._required = tuple(n for n in numeric if not columns[n].nullable)
        self._take_required = operator.itemgetter(*self._required) if self._required else None
        self._optional = tuple(n for n in numeric if columns[n].nullable)
        self._categorical = tuple(n for n in features if n in categorical)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        inputs: dict[str, np.ndarray] = {}
        if self._take_required is not None:
            block = np.array(list(map(self._take_required, records)), dtype=np.float32)
            # [N, features] -> [features, N, 1]: each item is a contiguous [N, 1] column.
            columns = block.reshape(len(records), -1).T.copy()[:, :, None]
            inputs.update(zip(self._required, columns, strict=True))
        for name in self._optional:
            # numpy turns None into NaN in a float array
            inputs[name] = np.array([record.get(name) for record in records], dtype=np.float32).reshape(-1, 1)
        for name in self._categorical:
            column = [_category(record.get(name)) for record in records]
            inputs[name] = np.array(column, dtype=object).reshape(-1, 1)
        return inputs


def _category(value: Any) -> str:
    # Check records written from a data frame may carry NaN for a missing category, not None.
    return value if isinstance(value, str) else MISSING_CATEGORY


@dataclass(frozen=True)
class Predictions:
    values: np.ndarray  # 1-D: labels for a classifier, float32 values for a regressor
    probabilities: np.ndarray | None  # [N, n_classes] in the order of LoadedBundle.class_names

    def rows(self, start: int, end: int) -> Predictions:
        probabilities = None if self.probabilities is None else self.probabilities[start:end]
        return Predictions(self.values[start:end], probabilities)


# Rows a load runs to price one row's inference: enough that a run's fixed cost (tens of
# microseconds) is a small part of it, few enough to cost a 100-tree forest about 2 ms, once a load.
COST_SAMPLE_ROWS = 256


@dataclass(frozen=True)
class RowCost:
    """What one record costs this model, measured at load: its ONNX run, and its JSON as a client
    sends it. Serving prices a request's body with it (serving/app.py decides where to answer)."""

    inference_seconds: float
    request_bytes: float


@dataclass(frozen=True)
class LoadedBundle:
    pointer: ServingPointer
    manifest: BundleManifest
    session: Any  # onnxruntime.InferenceSession (untyped)
    output_names: list[str]
    build_inputs: InputBuilder
    class_names: tuple[str, ...] | None  # JSON keys of the probabilities; None for a regressor
    # None until measured (load_bundle measures it); keyword-only, so subclasses add plain fields.
    row_cost: RowCost | None = field(default=None, kw_only=True)

    @property
    def name(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict(self, records: Sequence[Mapping[str, Any]]) -> Predictions:
        # The binding's own run, not InferenceSession.run: that wrapper re-checks the feed's names on
        # every call (quadratic in the inputs: ~7 us for 20 features, a third of a single prediction),
        # which load_bundle checked once for all.
        outputs = self.session._sess.run(self.output_names, self.build_inputs(records), None)
        values = np.asarray(outputs[0]).reshape(-1)
        probabilities = None
        if self.class_names is not None:
            # float32 rounding can put a sure class at 1.0000001, which no client takes for a probability
            probabilities = np.clip(np.asarray(outputs[1]), 0.0, 1.0)
        return Predictions(values, probabilities)


def inference_session(onnx_bytes: bytes) -> Any:
    options = onnxruntime.SessionOptions()
    # One request's rows are few; threads would only contend with the server's other requests.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def fetch_bundle(bucket: str, pointer: ServingPointer) -> LoadedBundle:
    """The bundle the pointer names, read from the bucket and proven. Raises BundleMissingError for a
    file that is not there, BundleRejectedError (or pydantic's ValidationError, for a malformed
    manifest) for a bundle that is wrong, and the S3 client's own errors for anything else."""
    found = s3.get_bytes(bucket, pointer.manifest_key)
    if found is None:
        raise BundleMissingError(f"no manifest at s3://{bucket}/{pointer.manifest_key}")
    manifest = BundleManifest.model_validate_json(found[0])
    onnx = s3.get_bytes(bucket, manifest.onnx.key)
    if onnx is None:
        raise BundleMissingError(f"no ONNX model at s3://{bucket}/{manifest.onnx.key}")
    return load_bundle(pointer, manifest, onnx[0])


def load_bundle(pointer: ServingPointer, manifest: BundleManifest, onnx_bytes: bytes) -> LoadedBundle:
    """Raises BundleRejectedError saying what is wrong unless the bundle proves itself."""
    if (manifest.model, manifest.version) != (pointer.model, pointer.version):
        raise BundleRejectedError(
            f"the pointer names {pointer.model} version {pointer.version}, "
            f"the manifest {manifest.model} version {manifest.version}"
        )
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != manifest.onnx.sha256:
        raise BundleRejectedError(f"model.onnx has sha256 {digest}, the manifest says {manifest.onnx.sha256}")
    contract = manifest.contract
    try:
        session = inference_session(onnx_bytes)
    except Exception as error:  # onnxruntime raises its own untyped errors for a bad graph
        raise BundleRejectedError(f"onnxruntime cannot load model.onnx: {error}") from error
    _check_inputs(session, manifest)
    classifier = contract.task is Task.classification
    classes = manifest.onnx.classes or []
    if classifier and not classes:
        raise BundleRejectedError("a classifier's manifest must list its classes (onnx.classes)")
    model = LoadedBundle(
        pointer=pointer,
        manifest=manifest,
        session=session,
        output_names=[node.name for node in session.get_outputs()],
        build_inputs=InputBuilder(contract),
        class_names=tuple(str(name) for name in classes) if classifier else None,
    )
    _reproduce_check(model)
    return replace(model, row_cost=_row_cost(model))


def _row_cost(model: LoadedBundle) -> RowCost:
    records = model.manifest.check.records
    sample = (records * (COST_SAMPLE_ROWS // len(records) + 1))[:COST_SAMPLE_ROWS]
    started = time.perf_counter()
    model.predict(sample)
    seconds = (time.perf_counter() - started) / len(sample)
    # ", " between records and the JSON's own spacing: an estimate, not a count.
    request_bytes = sum(len(json.dumps(record, default=str)) + 2 for record in records) / len(records)
    return RowCost(inference_seconds=seconds, request_bytes=request_bytes)


def _check_inputs(session: Any, manifest: BundleManifest) -> None:
    session_inputs = {node.name for node in session.get_inputs()}
    features = set(manifest.contract.features)
    if session_inputs != features or set(manifest.onnx.inputs) != features:
        raise BundleRejectedError(
            f"the ONNX inputs {sorted(session_inputs)} (manifest: {sorted(manifest.onnx.inputs)}) "
            f"are not the contract's features {sorted(features)}"
        )


def _reproduce_check(model: LoadedBundle) -> None:
    check = model.manifest.check
    if not check.records or len(check.records) != len(check.predictions):
        raise BundleRejectedError(
            f"{len(check.records)} check records for {len(check.predictions)} predictions: nothing to prove"
        )
    try:
        predictions = model.predict(check.records)
    except Exception as error:  # e.g. a check record without a feature: the bundle is malformed
        raise BundleRejectedError(f"the check records cannot be run: {error!r}") from error
    if model.class_names is not None:
        _check_labels(predictions, check.predictions, len(model.class_names))
    else:
        _check_values(predictions.values, check.predictions, check.tolerance)


def _check_labels(predictions: Predictions, expected: list[Any], n_classes: int) -> None:
    if predictions.probabilities is None or predictions.probabilities.shape[1:] != (n_classes,):
        shape = None if predictions.probabilities is None else predictions.probabilities.shape
        raise BundleRejectedError(f"probabilities of shape {shape} for {n_classes} classes")
    actual = predictions.values.tolist()
    # 1 and 1.0 are the same label whichever side wrote it.
    wrong = [i for i, (a, b) in enumerate(zip(actual, expected, strict=True)) if a != b and str(a) != str(b)]
    if wrong:
        first = wrong[0]
        raise BundleRejectedError(
            f"ONNX disagrees with scikit-learn on {len(wrong)} of {len(expected)} check records "
            f"(record {first}: {actual[first]!r}, expected {expected[first]!r})"
        )


def _check_values(actual: np.ndarray, expected: list[Any], tolerance: float) -> None:
    truth = np.asarray(expected, dtype=np.float64)
    relative = np.abs(actual.astype(np.float64) - truth) / np.maximum(np.abs(truth), 1.0)
    relative = np.nan_to_num(relative, nan=np.inf)  # a NaN prediction is as wrong as can be
    if not np.all(relative <= tolerance):
        worst = int(np.argmax(relative))
        raise BundleRejectedError(
            f"ONNX strays from scikit-learn by {relative[worst]:.3g} (relative) on check record {worst}, "
            f"more than the tolerance {tolerance:.3g}"
        )
