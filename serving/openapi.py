"""The OpenAPI document with one concrete path per served model (`/models/iris/predict`, ...), each with
the model's own record schema, rebuilt when the store's snapshot changes: a model promoted for the
first time appears in /docs without a restart."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from common.contracts import Task
from serving.bundle import LoadedModel

_PROBLEMS = {
    "type": "object",
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "examples": ["records[3].petal_length"]},
                    "rule": {"type": "string", "examples": ["less_than_equal"]},
                    "message": {"type": "string"},
                },
                "required": ["field", "rule", "message"],
            },
        }
    },
}
_ERRORS = {
    "400": "Malformed JSON (rule json_invalid)",
    "403": "No API key in x-api-key, or a wrong one (rules missing_api_key, wrong_api_key)",
    "404": "No such model (the known ones are listed)",
    "413": "Body over the size limit, or a batch over the record limit",
    "415": "The content type is not application/json",
    "422": "A record breaks the data contract: the field and the rule are named",
    "503": "The model is not loaded yet (the server is starting; rule not_loaded), or a large batch ran "
    "over its time budget (rule over_time_budget): retry after Retry-After seconds",
}


class ModelPaths:
    """app.openapi's replacement: the static document plus the models served, rebuilt when they change."""

    def __init__(self, static_openapi: Callable[[], dict[str, Any]], models: Callable[[], Mapping[str, Any]]):
        self._static_openapi = static_openapi
        self._models = models
        # What the document was built for: names and versions, not the models, which must be freed
        # once replaced.
        self._built_for: tuple[tuple[str, str, str], ...] | None = None
        self._document: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        models: Mapping[str, LoadedModel] = self._models()
        served = tuple((n, m.version, m.pointer.promoted_at) for n, m in sorted(models.items()))
        if served != self._built_for:
            document = copy.deepcopy(self._static_openapi())
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problems"] = _PROBLEMS
            # Relative to where the document is served (OpenAPI 3.1, "servers"): `<prefix>/openapi.json`
            # gives `<prefix>`, so a client of the document, /docs' "Try it out" included, calls the
            # paths under API Gateway's stage as at the server's root.
            document["servers"] = [{"url": ".", "description": "where this document is served from"}]
            for _, model in sorted(models.items()):
                schemas.update(_model_components(model))
                document["paths"].update(_model_paths(model))
            self._document, self._built_for = document, served
        return self._document


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _model_components(model: LoadedModel) -> dict[str, Any]:
    name = model.name
    record = _ref(f"{name}.Record")
    records = {"type": "array", "items": record, "minItems": 1, "maxItems": model.schemas.max_batch}
    if model.class_names is not None:
        prediction: dict[str, Any] = {"enum": list(model.manifest.onnx.classes or [])}
        probabilities = {
            "type": "object",
            "properties": {
                label: {"type": "number", "minimum": 0, "maximum": 1} for label in model.class_names
            },
        }
        single_extra = {"probabilities": probabilities}
        batch_extra = {"probabilities": {"type": "array", "items": probabilities}}
    else:
        prediction, single_extra, batch_extra = {"type": "number"}, {}, {}
    identity = {"model": {"const": name}, "version": {"type": "string", "examples": [model.version]}}
    # Without required keys a regressor's answer, single or batch, matches both shapes: oneOf refuses it.
    single_required, batch_required = ["model", "version", "prediction"], ["model", "version", "predictions"]
    return {
        f"{name}.Record": model.schemas.record_json_schema,
        f"{name}.Batch": {
            "title": f"{name} batch",
            "type": "object",
            "properties": {"records": records},
            "required": ["records"],
            "additionalProperties": False,
        },
        f"{name}.Prediction": {
            "type": "object",
            "properties": {**identity, "prediction": prediction, **single_extra},
            "required": single_required,
        },
        f"{name}.Predictions": {
            "type": "object",
            "properties": {**identity, "predictions": {"type": "array", "items": prediction}, **batch_extra},
            "required": batch_required,
        },
        f"{name}.Invocation": {
            "title": f"{name} invocation (MLflow scoring formats)",
            "oneOf": [
                _one_key("dataframe_records", records),
                _one_key(
                    "dataframe_split",
                    {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"enum": model.manifest.contract.features}},
                            "data": {"type": "array", "items": {"type": "array"}},
                            "index": {"type": "array"},
                        },
                        "required": ["columns", "data"],
                    },
                ),
                _one_key("instances", records),
                _one_key("inputs", {"anyOf": [records, _columns(model)]}),
            ],
        },
        f"{name}.InvocationResult": {
            "type": "object",
            "properties": {"predictions": {"type": "array", "items": prediction}},
        },
    }


def _columns(model: LoadedModel) -> dict[str, Any]:
    """The column form of `inputs`: each feature's values as a list, under the record's own rules."""
    record = model.schemas.record_json_schema
    columns = {
        feature: {"type": "array", "items": schema, "minItems": 1, "maxItems": model.schemas.max_batch}
        for feature, schema in record["properties"].items()
    }
    required = record.get("required", [])
    return {"type": "object", "properties": columns, "required": required, "additionalProperties": False}


def _one_key(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: schema}, "required": [key], "additionalProperties": False}


def _model_paths(model: LoadedModel) -> dict[str, Any]:
    name = model.name
    what = "class, with its probabilities" if model.manifest.contract.task is Task.classification else "value"
    about = (
        f"Version {model.version} of {name}, promoted at {model.pointer.promoted_at}. "
        "Every response carries the version in the `X-Model-Version` header."
    )
    return {
        f"/models/{name}/predict": {
            "post": _operation(
                name,
                f"predict_{name}",
                f"Predict the {what} of one record or a batch",
                about,
                {"oneOf": [_ref(f"{name}.Record"), _ref(f"{name}.Batch")]},
                {"oneOf": [_ref(f"{name}.Prediction"), _ref(f"{name}.Predictions")]},
            )
        },
        f"/models/{name}/invocations": {
            "post": _operation(
                name,
                f"invocations_{name}",
                "Predict, as `mlflow models serve` does",
                f"{about} Two rules beyond this schema are answered with a 422: the columns of `inputs` are "
                "of one length (`column_lengths`), and each row of `dataframe_split.data` has a value per "
                "column (`row_length`).",
                _ref(f"{name}.Invocation"),
                _ref(f"{name}.InvocationResult"),
            )
        },
    }


def _operation(
    tag: str, operation_id: str, summary: str, description: str, request: Any, response: Any
) -> dict[str, Any]:
    errors = {
        status: {"description": text, "content": {"application/json": {"schema": _ref("Problems")}}}
        for status, text in _ERRORS.items()
    }
    return {
        "tags": [tag],
        "operationId": operation_id.replace("-", "_"),
        "summary": summary,
        "description": description,
        # The scheme serving/auth.py declares, which /models and /metrics carry too.
        "security": [{"ApiKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {"description": "The predictions", "content": {"application/json": {"schema": response}}},
            **errors,
        },
    }
