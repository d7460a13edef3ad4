"""The serving API, end to end in process: real bundles in a moto bucket, FastAPI's TestClient."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.bundle_loader import InputBuilder
from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish, request_records, sklearn_predictions

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
HOUSE_RECORD = {"area_m2": 120.0, "rooms": 5, "year_built": 1990, "district": "north", "heating": "gas"}
MAX_BATCH = 50
MAX_BODY_BYTES = 20_000


@dataclass
class Serving:
    client: TestClient
    store: ModelStore
    s3: Any

    def predict(self, model: str, body: Any, **kwargs: Any) -> Any:
        return self.client.post(f"/models/{model}/predict", json=body, **kwargs)

    def metrics(self) -> str:
        return str(self.client.get("/metrics").text)


@pytest.fixture
def serving(aws_credentials: None) -> Iterator[Serving]:
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        publish(s3, serving_bundles.trained("house-prices", "house-prices"), "7")
        settings = ServingSettings(
            models_bucket=MODELS_BUCKET, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_BYTES
        )
        store = ModelStore(MODELS_BUCKET, max_batch=MAX_BATCH)
        # No `with`: the lifespan's background threads stay off; the tests refresh when they mean to.
        client = TestClient(create_app(settings, store=store, api_key=None))
        store.refresh()
        yield Serving(client, store, s3)


def test_one_record_gets_its_class_probabilities_and_version(serving: Serving) -> None:
    response = serving.predict("iris", IRIS_RECORD)

    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"
    assert response.headers["Server-Timing"].startswith("app;dur=")
    body = response.json()
    assert body["model"] == "iris" and body["version"] == "1"
    assert body["prediction"] == "setosa"
    assert set(body["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_a_batch_is_answered_as_scikit_learn_answers_it(serving: Serving) -> None:
    model = serving_bundles.trained("iris", "iris")
    rows = model.frame.head(40)

    response = serving.predict("iris", {"records": request_records(rows, model.contract)})

    assert response.status_code == 200
    body = response.json()
    assert body["predictions"] == sklearn_predictions(model, rows)
    assert len(body["probabilities"]) == 40
    assert max(body["probabilities"][0], key=body["probabilities"][0].get) == body["predictions"][0]


def test_a_regression_with_categories_and_missing_values(serving: Serving) -> None:
    model = serving_bundles.trained("house-prices", "house-prices")
    rows = model.frame.head(30)
    records = request_records(rows, model.contract)
    assert any(None in record.values() for record in records)

    batch = serving.predict("house-prices", {"records": records}).json()
    single = serving.predict("house-prices", {"area_m2": 80, "rooms": 3, "district": "east"}).json()

    truth = np.asarray(sklearn_predictions(model, rows))
    predicted = np.asarray(batch["predictions"])
    assert np.max(np.abs(predicted - truth) / np.maximum(np.abs(truth), 1)) <= 1e-4
    assert "probabilities" not in batch and "probabilities" not in single
    assert isinstance(single["prediction"], float)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": list(IRIS_RECORD), "data": [list(IRIS_RECORD.values())] * 2}},
        {
            "dataframe_split": {
                "index": [0, 1],
                "columns": list(IRIS_RECORD),
                "data": [list(IRIS_RECORD.values())] * 2,
            }
        },
        {"dataframe_records": [IRIS_RECORD, IRIS_RECORD]},
        {"instances": [IRIS_RECORD, IRIS_RECORD]},
        {"inputs": [IRIS_RECORD, IRIS_RECORD]},
        {"inputs": {name: [value, value] for name, value in IRIS_RECORD.items()}},
    ],
    ids=["dataframe_split", "with_index", "dataframe_records", "instances", "inputs", "inputs_columns"],
)
def test_invocations_speaks_mlflow_scoring_formats(serving: Serving, payload: dict[str, Any]) -> None:
    response = serving.client.post("/models/iris/invocations", json=payload)

    assert response.status_code == 200
    assert response.json() == {"predictions": ["setosa", "setosa"]}
    assert response.headers["X-Model-Version"] == "1"


def test_models_are_described_with_metrics_promotion_lineage_and_schema(serving: Serving) -> None:
    listed = serving.client.get("/models").json()
    iris = serving.client.get("/models/iris").json()

    assert [model["name"] for model in listed] == ["house-prices", "iris"]
    assert iris["version"] == "1" and iris["task"] == "classification"
    assert iris["metrics"] == {"f1_macro": 0.9}
    assert iris["promoted_at"] == "2026-11-27T12:00:00Z"
    assert iris["lineage"]["run_id"] == "run-iris-1"
    assert iris["lineage"]["sources"] == ["s3://raw/iris/part-1.csv", "s3://raw/iris/part-2.csv"]
    assert iris["lineage"]["dvc_lock"].startswith("schema:")
    assert iris["request_schema"]["properties"]["petal_length"] == {
        "maximum": 15.0,
        "minimum": 0.0,
        "title": "Petal Length",
        "type": "number",
    }


def test_health_is_always_ok_and_ready_waits_for_every_champion(aws_credentials: None) -> None:
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        store = ModelStore(MODELS_BUCKET, max_batch=10)
        client = TestClient(
            create_app(ServingSettings(models_bucket=MODELS_BUCKET), store=store, api_key=None)
        )

        before = client.get("/ready")
        store.refresh()
        after = client.get("/ready")
        described = client.get("/models/iris")

        # no boot set a release; the worker is this process (the test client runs the app in it)
        assert client.get("/health").json() == {"status": "ok", "release": "unknown", "worker": os.getpid()}
        assert before.status_code == 503 and "pointers" in before.json()["missing"]
        assert after.status_code == 200
        assert described.headers["x-arrival-worker"] == str(os.getpid())
        assert after.json() == {
            "ready": True,
            "reason": None,
            "models": {"iris": "1"},
            "missing": {},
            "stale": {},
            "unloaded": [],
            "listing": None,
        }


def test_metrics_count_requests_latency_refusals_and_versions(serving: Serving) -> None:
    serving.predict("iris", IRIS_RECORD)
    serving.predict("iris", {**IRIS_RECORD, "petal_length": 99})
    serving.predict("nope", IRIS_RECORD)

    text = serving.metrics()

    assert 'arrival_requests_total{model="iris",route="predict",status="200"} 1.0' in text
    assert 'arrival_requests_total{model="iris",route="predict",status="422"} 1.0' in text
    assert 'arrival_requests_total{model="_unknown",route="predict",status="404"} 1.0' in text
    assert 'arrival_request_errors_total{model="iris",route="predict",rule="less_than_equal"} 1.0' in text
    assert 'arrival_request_seconds_count{model="iris",route="predict"} 2.0' in text
    assert 'arrival_model_version{model="iris"} 1.0' in text
    assert 'arrival_model_version{model="house-prices"} 7.0' in text
    assert 'arrival_model_reloads_total{model="iris"} 1.0' in text


def _problem(response: Any) -> dict[str, Any]:
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    return dict(detail[0])


def _iris(**changes: Any) -> dict[str, Any]:
    return {**IRIS_RECORD, **changes}


BAD_RECORDS = [
    pytest.param(_iris(sepal_length="abc"), "sepal_length", "float_type", id="text_for_a_number"),
    pytest.param(_iris(sepal_length="5.1"), "sepal_length", "float_type", id="numeric_text"),
    pytest.param(_iris(sepal_length=True), "sepal_length", "float_type", id="boolean"),
    pytest.param(_iris(sepal_length=None), "sepal_length", "float_type", id="null_not_nullable"),
    pytest.param(
        {k: v for k, v in IRIS_RECORD.items() if k != "petal_width"}, "petal_width", "missing", id="missing"
    ),
    pytest.param(_iris(colour="blue"), "colour", "extra_forbidden", id="extra_field"),
    pytest.param(_iris(petal_length=15.5), "petal_length", "less_than_equal", id="above_max"),
    pytest.param(_iris(petal_width=-1), "petal_width", "greater_than_equal", id="below_min"),
]


@pytest.mark.parametrize(("record", "field", "rule"), BAD_RECORDS)
def test_a_bad_record_is_a_422_naming_the_field_and_rule(
    serving: Serving, record: dict[str, Any], field: str, rule: str
) -> None:
    single = serving.predict("iris", record)
    batch = serving.predict("iris", {"records": [IRIS_RECORD] * 3 + [record]})

    assert (single.status_code, _problem(single)["field"], _problem(single)["rule"]) == (422, field, rule)
    assert (batch.status_code, _problem(batch)["field"], _problem(batch)["rule"]) == (
        422,
        f"records[3].{field}",
        rule,
    )
    assert single.headers["X-Model-Version"] == "1"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused_even_as_bare_json_tokens(serving: Serving, token: str) -> None:
    body = json.dumps(IRIS_RECORD).replace("1.4", token)

    response = serving.client.post(
        "/models/iris/predict", content=body, headers={"Content-Type": "application/json"}
    )
    invocation = serving.client.post(
        "/models/iris/invocations",
        content=json.dumps({"dataframe_records": [IRIS_RECORD]}).replace("1.4", token),
        headers={"Content-Type": "application/json"},
    )

    assert (response.status_code, _problem(response)["field"], _problem(response)["rule"]) == (
        422,
        "petal_length",
        "finite_number",
    )
    assert (invocation.status_code, _problem(invocation)["field"]) == (
        422,
        "dataframe_records[0].petal_length",
    )


def test_an_unknown_category_is_named(serving: Serving) -> None:
    response = serving.predict("house-prices", {**HOUSE_RECORD, "district": "moon"})

    assert response.status_code == 422
    assert _problem(response)["field"] == "district"
    assert _problem(response)["rule"] == "literal_error"
    assert "'north'" in _problem(response)["message"]
    assert response.headers["X-Model-Version"] == "7"


def test_a_batch_over_the_limit_is_413_and_an_empty_batch_422(serving: Serving) -> None:
    too_many = serving.predict("iris", {"records": [IRIS_RECORD] * (MAX_BATCH + 1)})
    empty = serving.predict("iris", {"records": []})

    assert (too_many.status_code, _problem(too_many)["field"], _problem(too_many)["rule"]) == (
        413,
        "records",
        "too_long",
    )
    assert (empty.status_code, _problem(empty)["field"], _problem(empty)["rule"]) == (
        422,
        "records",
        "too_short",
    )


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(serving: Serving) -> None:
    body = json.dumps({"records": [IRIS_RECORD] * 400}).encode()
    assert len(body) > MAX_BODY_BYTES

    declared = serving.client.post(
        "/models/iris/predict", content=body, headers={"Content-Type": "application/json"}
    )
    # A generator body goes out chunked, with no Content-Length: the limit holds while reading.
    streamed = serving.client.post(
        "/models/iris/predict",
        content=(body[i : i + 4096] for i in range(0, len(body), 4096)),
        headers={"Content-Type": "application/json"},
    )

    for response in (declared, streamed):
        assert (response.status_code, _problem(response)["field"], _problem(response)["rule"]) == (
            413,
            "body",
            "body_too_large",
        )
    assert "content-length" not in streamed.request.headers


def test_malformed_json_is_400(serving: Serving) -> None:
    response = serving.client.post(
        "/models/iris/predict", content=b'{"sepal_length": 5.1', headers={"Content-Type": "application/json"}
    )
    invocation = serving.client.post(
        "/models/iris/invocations", content=b"{oops", headers={"Content-Type": "application/json"}
    )

    assert (response.status_code, _problem(response)["field"], _problem(response)["rule"]) == (
        400,
        "body",
        "json_invalid",
    )
    assert (invocation.status_code, _problem(invocation)["rule"]) == (400, "json_invalid")


def test_a_wrong_content_type_is_415_naming_json(serving: Serving) -> None:
    response = serving.client.post(
        "/models/iris/predict", content=json.dumps(IRIS_RECORD), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert (_problem(response)["field"], _problem(response)["rule"]) == (
        "content-type",
        "unsupported_media_type",
    )
    assert "application/json" in _problem(response)["message"]


def test_an_unknown_model_is_404_naming_it_and_the_known_ones(serving: Serving) -> None:
    for response in (
        serving.predict("penguins", IRIS_RECORD),
        serving.client.post("/models/penguins/invocations", json={"instances": [IRIS_RECORD]}),
        serving.client.get("/models/penguins"),
    ):
        assert response.status_code == 404
        problem = _problem(response)
        assert (problem["field"], problem["rule"]) == ("model", "unknown_model")
        assert "'penguins'" in problem["message"] and "house-prices, iris" in problem["message"]
        assert response.json()["known_models"] == ["house-prices", "iris"]


def test_a_server_still_loading_its_models_answers_503_to_retry_not_404(serving: Serving) -> None:
    # A restarted server whose first look at the pointers has not happened yet: "no such model"
    # would be wrong, and a client or a load balancer would give up on a model that exists.
    starting = ModelStore(MODELS_BUCKET, max_batch=MAX_BATCH)
    client = TestClient(
        create_app(ServingSettings(models_bucket=MODELS_BUCKET), store=starting, api_key=None)
    )

    for response in (client.post("/models/iris/predict", json=IRIS_RECORD), client.get("/models/iris")):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert _problem(response)["rule"] == "not_loaded"
    assert client.get("/ready").status_code == 503

    starting.refresh()
    assert client.get("/ready").status_code == 200
    assert client.post("/models/iris/predict", json=IRIS_RECORD).status_code == 200
    assert client.post("/models/penguins/predict", json=IRIS_RECORD).status_code == 404


@pytest.mark.parametrize(
    ("payload", "field", "rule"),
    [
        (
            {
                "dataframe_split": {
                    "columns": list(IRIS_RECORD),
                    "data": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 99, 0.2]],
                }
            },
            "dataframe_split.data[1].petal_length",
            "less_than_equal",
        ),
        (
            {"dataframe_split": {"columns": list(IRIS_RECORD), "data": [[5.1]]}},
            "dataframe_split.data[0]",
            "row_length",
        ),
        ({"dataframe_split": {"data": [[5.1]]}}, "dataframe_split.columns", "missing"),
        ({"instances": [IRIS_RECORD, {**IRIS_RECORD, "extra": 1}]}, "instances[1].extra", "extra_forbidden"),
        ({"inputs": {"sepal_length": [1.0, 2.0], "sepal_width": [1.0]}}, "inputs", "column_lengths"),
        ({"dataframe_records": []}, "dataframe_records", "too_short"),
        ({"records": [IRIS_RECORD]}, "body", "unknown_format"),
        ({"instances": [IRIS_RECORD], "inputs": [IRIS_RECORD]}, "body", "unknown_format"),
    ],
    ids=[
        "value",
        "row_length",
        "no_columns",
        "extra",
        "column_lengths",
        "empty",
        "not_mlflow",
        "two_formats",
    ],
)
def test_invocations_refusals_name_the_field(
    serving: Serving, payload: dict[str, Any], field: str, rule: str
) -> None:
    response = serving.client.post("/models/iris/invocations", json=payload)

    assert response.status_code == 422
    assert (_problem(response)["field"], _problem(response)["rule"]) == (field, rule)


def test_a_failure_inside_inference_is_a_counted_json_500(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(InputBuilder, "__call__", broken)

    response = serving.predict("iris", IRIS_RECORD)

    assert response.status_code == 500
    assert _problem(response)["rule"] == "internal_error"
    assert response.headers["X-Model-Version"] == "1"
    assert (
        'arrival_request_errors_total{model="iris",route="predict",rule="internal_error"} 1.0'
        in serving.metrics()
    )


def test_each_model_has_its_own_documented_paths(serving: Serving) -> None:
    document = serving.client.get("/openapi.json").json()
    paths, schemas = document["paths"], document["components"]["schemas"]

    assert "/models/{model}/predict" not in paths
    assert {"/models/iris/predict", "/models/iris/invocations", "/models/house-prices/predict"} <= set(paths)
    body = paths["/models/iris/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "oneOf": [{"$ref": "#/components/schemas/iris.Record"}, {"$ref": "#/components/schemas/iris.Batch"}]
    }
    iris = schemas["iris.Record"]
    assert list(iris["properties"]) == serving_bundles.trained("iris", "iris").contract.features
    assert set(iris["required"]) == set(IRIS_RECORD)
    assert (iris["properties"]["petal_length"]["minimum"], iris["properties"]["petal_length"]["maximum"]) == (
        0,
        15,
    )
    assert iris["additionalProperties"] is False
    houses = schemas["house-prices.Record"]["properties"]
    assert houses["district"]["enum"] == ["north", "south", "east", "west", "centre"]
    assert {"type": "null"} in houses["heating"]["anyOf"]
    assert "heating" not in schemas["house-prices.Record"]["required"]
    assert schemas["iris.Batch"]["properties"]["records"]["maxItems"] == MAX_BATCH
    # The docs page loads the document from the address it names, relative to its own (so it holds
    # behind API Gateway's stage prefix too): that address must serve the document.
    page = serving.client.get("/docs")
    assert page.status_code == 200
    named = re.search(r"url: '([^']+)'", page.text)
    assert named, page.text
    document = serving.client.get(urljoin(str(page.url), named.group(1)))
    assert document.status_code == 200 and document.json()["paths"]
    assert urljoin("https://api.example/Prod/docs", named.group(1)) == "https://api.example/Prod/openapi.json"


def test_a_model_promoted_for_the_first_time_is_documented_without_a_restart(serving: Serving) -> None:
    assert "/models/irises/predict" not in serving.client.get("/openapi.json").json()["paths"]
    publish(serving.s3, serving_bundles.trained("iris", "irises"), "1")

    serving.store.refresh()

    assert "/models/irises/predict" in serving.client.get("/openapi.json").json()["paths"]
    assert serving.predict("irises", IRIS_RECORD).status_code == 200


def test_a_promotion_swaps_the_version_answering(serving: Serving) -> None:
    publish(serving.s3, serving_bundles.trained("iris", "iris"), "2")

    before = serving.predict("iris", IRIS_RECORD)
    serving.store.refresh()
    after = serving.predict("iris", IRIS_RECORD)

    assert (before.headers["X-Model-Version"], after.headers["X-Model-Version"]) == ("1", "2")
    assert after.json()["version"] == "2"
    assert 'arrival_model_version{model="iris"} 2.0' in serving.metrics()


@pytest.mark.parametrize("tamper", ["check", "sha256"])
def test_a_refused_bundle_leaves_the_old_version_serving(serving: Serving, tamper: str) -> None:
    model = serving_bundles.trained("iris", "iris")
    manifest = serving_bundles.manifest_of(model, "2")
    if tamper == "check":
        wrong = ["virginica" if label == "setosa" else "setosa" for label in manifest.check.predictions]
        publish(
            serving.s3,
            model,
            "2",
            manifest=manifest.model_copy(
                update={"check": manifest.check.model_copy(update={"predictions": wrong})}
            ),
        )
    else:
        publish(serving.s3, model, "2", onnx=model.onnx + b"tampered")

    serving.store.refresh()
    response = serving.predict("iris", IRIS_RECORD)
    ready = serving.client.get("/ready")

    assert response.status_code == 200 and response.headers["X-Model-Version"] == "1"
    assert 'arrival_model_reload_failures_total{model="iris"} 1.0' in serving.metrics()
    # still ready (version 1 answers), with the refused version reported
    assert ready.status_code == 200 and "version 2 refused" in ready.json()["stale"]["iris"]


def test_a_batch_breaking_every_rule_names_the_first_hundred_problems(serving: Serving) -> None:
    broken = {"sepal_length": "abc", "sepal_width": -1, "petal_length": 99}

    response = serving.predict("iris", {"records": [broken] * MAX_BATCH})

    detail = response.json()["detail"]
    assert response.status_code == 422
    assert len(detail) == 101
    assert detail[-1] == {
        "field": "body",
        "rule": "too_many_problems",
        "message": f"and {4 * MAX_BATCH - 100} more",
    }
