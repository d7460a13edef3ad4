"""The serving function answers API Gateway (REST API, proxy integration, stage Prod) through Mangum."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

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
