"""The serving API fuzzed against its own OpenAPI document by schemathesis, in process (ASGI).

Every operation in the document, each model's own predict and invocations paths included, gets its
documented examples, the coverage phase's boundary values, and generated valid and invalid requests.
Every response must be a status the operation declares (or a 405 for a method it does not have), never
a 5xx, with the declared content type and a body that matches the declared schema; valid requests must
be accepted and invalid ones refused. The seed is fixed and generation deterministic, so every run
sends the same requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish

# Limits small enough for the generator to cross them: the 413s are part of the contract too.
MAX_BATCH = 20
MAX_BODY_BYTES = 50_000
# The app is fuzzed as the server runs it, with a key: schemathesis sends it as the document says
# (the ApiKey scheme), and also checks that each operation refuses a request without it.
API_KEY = "fuzzing-key-0123456789abcdef"  # pragma: allowlist secret  # a test's own
KEYED = {"x-api-key": API_KEY}

FUZZ_CONFIG: dict[str, Any] = {
    "seed": 20261127,
    "headers": KEYED,
    "generation": {
        "mode": "all",
        "max-examples": 60,
        "deterministic": True,
        # No example database: what a run finds must follow from the seed alone, on any machine.
        "database": "none",
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        # One state (the store) and no operation that changes it: nothing for stateful links to chain.
        "stateful": {"enabled": False},
    },
    "checks": {
        "enabled": True,
        # A batch over the record limit is a 413 by design, as every predict path documents.
        "negative_data_rejection": {"expected-statuses": [400, 404, 413, 415, 422]},
    },
    "operations": [
        {
            # Equal column lengths in `inputs` and rows as long as `columns` in `dataframe_split` are
            # rules JSON Schema cannot state (the operation's description does): a body valid under the
            # schema can still be a 422 there. Every other check still runs on these operations.
            "include-path-regex": "/invocations$",
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    ],
}


@pytest.fixture
def fuzzed_app(aws_credentials: None) -> Iterator[FastAPI]:
    """A classifier (numeric features) and a regressor (categorical and nullable features)."""
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        publish(s3, serving_bundles.trained("house-prices", "house-prices"), "7")
        settings = ServingSettings(
            models_bucket=MODELS_BUCKET, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_BYTES
        )
        store = ModelStore(MODELS_BUCKET, max_batch=MAX_BATCH)
        app = create_app(settings, store=store, api_key=API_KEY)
        store.refresh()
        yield app


@pytest.fixture
def api_schema(fuzzed_app: FastAPI) -> BaseSchema:
    config = schemathesis.Config.from_dict(FUZZ_CONFIG)
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, config=config, headers=KEYED)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture reads and renames the test's Node._nodeid, an attribute pytest
    # 9.2 no longer has; without it the test errors before sending a request.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_api_answers_as_its_openapi_document_says(case: Case[Any]) -> None:
    case.call_and_validate()


@pytest.mark.parametrize("model", ["iris", "house-prices"])
def test_each_served_model_is_described_as_documented(api_schema: BaseSchema, model: str) -> None:
    # The fuzzer draws `{model}` from all strings and so only ever meets the 404s.
    case = api_schema["/models/{model}"]["GET"].Case(path_parameters={"model": model})

    response = case.call_and_validate(headers=KEYED)

    assert response.status_code == 200
    assert response.json()["name"] == model


# What the fuzzer found, pinned as explicit cases so each stays fixed whatever the generator draws.
HOUSE_RECORD = {"area_m2": 120.0, "rooms": 5, "year_built": 1990, "district": "north", "heating": "gas"}
# float32 rounding made the sure class's probability 1.0000001 for this record.
SURE_IRIS = {"sepal_length": 0.0, "sepal_width": 9.0, "petal_length": 0.0, "petal_width": 0.0}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/house-prices/predict", {"records": [HOUSE_RECORD]}),
        ("/models/house-prices/predict", HOUSE_RECORD),
        ("/models/iris/predict", SURE_IRIS),
        ("/models/iris/predict", {"records": [SURE_IRIS]}),
    ],
    ids=["regression_batch", "regression_single", "sure_class", "sure_class_batch"],
)
def test_answers_match_exactly_one_documented_shape(api_schema: BaseSchema, path: str, body: Any) -> None:
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")

    response = case.call_and_validate(headers=KEYED)

    assert response.status_code == 200


def test_metrics_are_documented_as_prometheus_text(api_schema: BaseSchema) -> None:
    response = api_schema["/metrics"]["GET"].Case().call_and_validate(headers=KEYED)

    assert response.headers["content-type"][0].startswith("text/plain")


def test_the_column_form_of_inputs_documents_each_feature(api_schema: BaseSchema) -> None:
    schemas = api_schema.raw_schema["components"]["schemas"]
    record = schemas["house-prices.Record"]
    inputs = next(
        form for form in schemas["house-prices.Invocation"]["oneOf"] if "inputs" in form["properties"]
    )
    column_form = inputs["properties"]["inputs"]["anyOf"][1]
    operation = api_schema["/models/house-prices/invocations"]["POST"]
    columns: dict[str, Any] = {name: [value] for name, value in HOUSE_RECORD.items()}

    accepted = operation.Case(body={"inputs": columns}, media_type="application/json").call_and_validate(
        headers=KEYED
    )
    unknown = operation.Case(body={"inputs": {**columns, "colour": [1]}}, media_type="application/json")
    refused = unknown.call(headers=KEYED)

    assert (column_form["required"], column_form["additionalProperties"]) == (record["required"], False)
    for name, rules in record["properties"].items():
        assert column_form["properties"][name]["items"] == rules
    assert accepted.status_code == 200
    assert (refused.status_code, refused.json()["detail"][0]["field"]) == (422, "inputs[0].colour")
