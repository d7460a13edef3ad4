"""The server's own API key check (FastAPI's TestClient, real bundles in a moto bucket): every route
but the probes answers 403 without the key or with a wrong one, a refused request runs no model and is
never captured, and `arrival-serve` refuses to start without a key rather than serve open."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from common.adapters import secrets
from serving.app import create_app
from serving.capture import CaptureWriter
from serving.main import api_key_of
from serving.settings import ServerSettings, ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish

API_KEY = "k3yOfTheStackGeneratedBySecretsManager01"  # pragma: allowlist secret  # a test's own
CAPTURE_BUCKET = "unit-capture"
IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
INVOCATION = {"dataframe_records": [IRIS_RECORD]}

# Every route that needs the key: (method, path, JSON body).
PROTECTED = [
    ("POST", "/models/iris/predict", IRIS_RECORD),
    ("POST", "/models/iris/invocations", INVOCATION),
    ("POST", "/models/no-such-model/predict", IRIS_RECORD),  # refused before the name is looked up
    ("GET", "/models", None),
    ("GET", "/models/iris", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/docs/swagger-ui-bundle.js", None),
]
WRONG_KEYS = {
    "missing": None,
    "empty": "",
    "wrong": "x" * len(API_KEY),
    "a prefix": API_KEY[:-1],
    "longer": API_KEY + "0",
    "not ascii": "ключ-" + API_KEY,
}


@dataclass
class Server:
    client: TestClient
    capture: CaptureWriter
    s3: Any

    def call(self, method: str, path: str, body: Any, api_key: str | None) -> Any:
        # As bytes: a caller may send any octets, which the server reads as Latin-1.
        headers = {} if api_key is None else {"x-api-key": api_key.encode()}
        return self.client.request(method, path, json=body, headers=headers)

    def captured_request_ids(self) -> list[str]:
        self.capture.flush()
        listed = self.s3.list_objects_v2(Bucket=CAPTURE_BUCKET).get("Contents", [])
        found = []
        for entry in listed:
            body = gzip.decompress(self.s3.get_object(Bucket=CAPTURE_BUCKET, Key=entry["Key"])["Body"].read())
            found += [json.loads(line)["request_id"] for line in body.splitlines()]
        return found


@pytest.fixture
def server(aws_credentials: None) -> Iterator[Server]:
    with serving_bundles.models_bucket() as s3:
        s3.create_bucket(Bucket=CAPTURE_BUCKET)
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        settings = ServingSettings(models_bucket=MODELS_BUCKET, capture_bucket=CAPTURE_BUCKET, capture_rate=1)
        store = ModelStore(MODELS_BUCKET, max_batch=50)
        app = create_app(settings, store=store, api_key=API_KEY)
        store.refresh()
        yield Server(TestClient(app), app.state.capture, s3)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("given", WRONG_KEYS.values(), ids=WRONG_KEYS.keys())
def test_a_request_without_the_key_is_refused_with_403(
    server: Server, method: str, path: str, body: Any, given: str | None
) -> None:
    response = server.call(method, path, body, given)

    assert response.status_code == 403, response.text
    (problem,) = response.json()["detail"]
    assert problem["field"] == "x-api-key"
    assert problem["rule"] == ("missing_api_key" if not given else "wrong_api_key")
    assert API_KEY not in response.text


@pytest.mark.parametrize(("method", "path", "body"), [p for p in PROTECTED if "no-such" not in p[1]])
def test_the_key_opens_every_route(server: Server, method: str, path: str, body: Any) -> None:
    assert server.call(method, path, body, API_KEY).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_the_probes_stay_open_for_load_balancers(server: Server, path: str) -> None:
    assert server.call("GET", path, None, None).status_code == 200


def test_a_refused_prediction_runs_no_model_and_is_never_captured(server: Server) -> None:
    # GIVEN a server that captures every request
    # WHEN one request comes without the key, one with a wrong one, and one with the key
    refused = [
        server.client.post("/models/iris/predict", json=IRIS_RECORD, headers={"x-request-id": "no-key"}),
        server.client.post(
            "/models/iris/predict", json=IRIS_RECORD, headers={"x-request-id": "wrong", "x-api-key": "x" * 40}
        ),
    ]
    answered = server.client.post(
        "/models/iris/predict", json=IRIS_RECORD, headers={"x-request-id": "keyed", "x-api-key": API_KEY}
    )

    # THEN only the keyed one is answered, with a version, and captured
    assert [r.status_code for r in refused] == [403, 403] and answered.status_code == 200
    assert not any("x-model-version" in r.headers for r in refused)
    assert server.captured_request_ids() == ["keyed"]
    # AND the refusals are counted under one label, whatever model they named
    metrics = server.call("GET", "/metrics", None, API_KEY).text
    assert (
        'arrival_request_errors_total{model="_unauthenticated",route="predict",rule="missing_api_key"} 1.0'
        in metrics
    )
    assert (
        'arrival_request_errors_total{model="_unauthenticated",route="predict",rule="wrong_api_key"} 1.0'
        in metrics
    )


def test_the_schema_tells_clients_to_send_the_key(server: Server) -> None:
    document = server.call("GET", "/openapi.json", None, API_KEY).json()

    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": document["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    assert document["paths"]["/models/iris/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert "403" in document["paths"]["/models/iris/predict"]["post"]["responses"]
    assert document["paths"]["/models"]["get"]["security"] == [{"ApiKey": []}]
    assert "security" not in document["paths"]["/health"]["get"]


def test_the_lambda_app_leaves_the_check_to_api_gateway(aws_credentials: None) -> None:
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        store = ModelStore(MODELS_BUCKET, max_batch=50)
        app = create_app(
            ServingSettings(models_bucket=MODELS_BUCKET), store=store, mode="lambda", api_key=None
        )
        store.refresh()

        assert TestClient(app).post("/models/iris/predict", json=IRIS_RECORD).status_code == 200


def test_the_server_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARRIVAL_SERVING_MODELS_BUCKET", "models")
    for name in ("ARRIVAL_SERVING_API_KEY", "ARRIVAL_SERVING_API_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(
        ValidationError, match=r"refuses to serve without an API key.*ARRIVAL_SERVING_API_KEY_SECRET"
    ):
        ServerSettings()  # type: ignore[call-arg]
    # (the Lambda function's settings need none: API Gateway checks the key)
    assert ServingSettings().api_key is None  # type: ignore[call-arg]


def test_a_short_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="api_key"):
        ServerSettings(models_bucket="models", api_key="short")  # type: ignore[arg-type]


def test_the_server_reads_its_key_from_the_stacks_secret(aws_credentials: None) -> None:
    with serving_bundles.models_bucket():
        secrets.secrets_client.cache_clear()
        arn = boto3.client("secretsmanager").create_secret(Name="serving-key", SecretString=API_KEY)["ARN"]
        settings = ServerSettings(models_bucket="models", api_key_secret=arn)

        assert api_key_of(settings) == API_KEY

        boto3.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="too-short")
        with pytest.raises(ValueError, match="shorter than 20 characters"):
            api_key_of(settings)
    secrets.secrets_client.cache_clear()
