"""The serving function answers API Gateway (REST API, proxy integration, stage Prod) through Mangum."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from common.adapters import s3
from serving import lambda_handler
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish
from tests.unit.conftest import FakeLambdaContext, load_event


@pytest.fixture
def deployed(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ARRIVAL_SERVING_MODELS_BUCKET", MODELS_BUCKET)
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        lambda_handler.asgi_handler.cache_clear()
        yield s3
        lambda_handler.asgi_handler.cache_clear()


def test_a_rest_api_proxy_event_is_answered(deployed: Any, lambda_context: FakeLambdaContext) -> None:
    # GIVEN the sample event `sam local invoke -e events/serving_apigw_predict.json` sends
    event = load_event("serving_apigw_predict")

    # WHEN the first invocation builds the app and the store loads the champion on the way
    response = lambda_handler.handler(event, lambda_context)

    # THEN the prediction comes back as API Gateway expects it
    assert response["statusCode"] == 200
    assert response["headers"]["x-model-version"] == "1"
    body = json.loads(response["body"])
    assert (body["model"], body["prediction"]) == ("iris", "setosa")


def test_the_app_is_built_once_and_bad_input_is_still_a_4xx(
    deployed: Any, lambda_context: FakeLambdaContext
) -> None:
    event = load_event("serving_apigw_predict")
    lambda_handler.handler(event, lambda_context)
    app = lambda_handler.asgi_handler()

    record = {"sepal_length": "abc", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    response = lambda_handler.handler({**event, "body": json.dumps(record)}, lambda_context)

    assert lambda_handler.asgi_handler() is app
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["detail"] == [
        {"field": "sepal_length", "rule": "float_type", "message": "Input should be a valid number"}
    ]


def test_a_cold_start_loads_only_the_model_it_is_asked_for(
    deployed: Any, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a second model with a champion, and every S3 read counted
    publish(deployed, serving_bundles.trained("house-prices", "house-prices"), "7")
    read: list[str] = []
    get_bytes = s3.get_bytes

    def counted(bucket: str, key: str) -> tuple[bytes, str] | None:
        read.append(key)
        return get_bytes(bucket, key)

    monkeypatch.setattr(s3, "get_bytes", counted)
    event = load_event("serving_apigw_predict")

    # WHEN the first invocation asks for iris, then one asks for house prices' description
    first = lambda_handler.handler(event, lambda_context)
    read_by_the_first = list(read)
    second = lambda_handler.handler(
        {**event, "path": "/models/house-prices", "httpMethod": "GET"}, lambda_context
    )

    # THEN the first read iris's bundle alone, and house prices loaded when it was asked for
    assert first["statusCode"] == 200
    assert read_by_the_first == [
        "pointers/iris.json",
        "bundles/iris/1/bundle.json",
        "bundles/iris/1/model.onnx",
    ]
    assert second["statusCode"] == 200 and json.loads(second["body"])["version"] == "7"
    assert json.loads(
        lambda_handler.handler({**event, "path": "/ready", "httpMethod": "GET"}, lambda_context)["body"]
    )["models"] == {"house-prices": "7", "iris": "1"}


def test_listing_the_models_loads_those_not_loaded_yet(
    deployed: Any, lambda_context: FakeLambdaContext
) -> None:
    publish(deployed, serving_bundles.trained("house-prices", "house-prices"), "7")
    event = load_event("serving_apigw_predict")
    ready_before = lambda_handler.handler({**event, "path": "/ready", "httpMethod": "GET"}, lambda_context)

    listed = lambda_handler.handler({**event, "path": "/models", "httpMethod": "GET"}, lambda_context)

    assert ready_before["statusCode"] == 200
    assert json.loads(ready_before["body"])["unloaded"] == ["house-prices", "iris"]
    assert [model["name"] for model in json.loads(listed["body"])] == ["house-prices", "iris"]
