"""Numbers the model cannot hold: serving's models compute in float32, so a finite JSON number beyond
float32's range would reach them as an infinity. Such a value is a 422 naming its field (and its record
in a batch), and an answer that is not a finite number is never returned as a 200 with a null."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.contracts import DataContract
from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, Trained, publish
from worker.onnx_export import to_onnx_bytes
from worker.training import build_model, features_of

FLOAT32_MAX = float(np.finfo(np.float32).max)
HOUSE = {"area_m2": 120.0, "rooms": 5, "year_built": 1990, "district": "north", "heating": "gas"}
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@cache
def unbounded(base: str, model: str, family: str) -> Trained:
    """The example contract with no min or max on any column: nothing but float32 limits the numbers."""
    document = serving_bundles.contract_for(base, model, family).model_dump(mode="json")
    for column in document["columns"].values():
        if column["type"] == "numeric":
            column["min"] = column["max"] = None
    contract = DataContract.model_validate(document)
    frame = serving_bundles.trained(base, base).frame
    pipeline = build_model(contract, {"n_estimators": 10} if family == "random_forest" else {})
    pipeline.fit(features_of(frame, contract), frame[contract.target])
    return Trained(contract, pipeline, to_onnx_bytes(pipeline, contract), frame)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "t",
            "AWS_SECRET_ACCESS_KEY": "t",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        with serving_bundles.models_bucket() as s3:
            publish(s3, unbounded("house-prices", "houses-linear", "linear"), "1")
            publish(s3, unbounded("iris", "iris-forest", "random_forest"), "1")
            publish(s3, unbounded("iris", "iris-linear", "linear"), "1")
            store = ModelStore(MODELS_BUCKET, max_batch=100)
            app = create_app(
                ServingSettings(models_bucket=MODELS_BUCKET, max_batch=100), store=store, api_key=None
            )
            store.refresh()
            yield TestClient(app)


def _problems(response: Any) -> list[tuple[str, str]]:
    return [(problem["field"], problem["rule"]) for problem in response.json()["detail"]]


@pytest.mark.parametrize("model", ["houses-linear", "iris-forest", "iris-linear"])
@pytest.mark.parametrize("value", [1e39, -1e39, 10**39, 3.5e38])
def test_a_single_value_beyond_float32_is_a_422_naming_its_field(
    client: TestClient, model: str, value: float
) -> None:
    record = {**HOUSE, "area_m2": value} if model.startswith("houses") else {**IRIS, "petal_length": value}
    field = "area_m2" if model.startswith("houses") else "petal_length"

    response = client.post(f"/models/{model}/predict", json=record)

    assert response.status_code == 422, response.text
    assert _problems(response) == [(field, "float32_range")]
    assert "float32" in response.json()["detail"][0]["message"]


def test_a_batch_names_the_record_and_the_field(client: TestClient) -> None:
    records = [HOUSE, HOUSE, {**HOUSE, "rooms": -1e39}, {**HOUSE, "year_built": 2e38 * 10}]

    response = client.post("/models/houses-linear/predict", json={"records": records})

    assert response.status_code == 422
    assert _problems(response) == [
        ("records[2].rooms", "float32_range"),
        ("records[3].year_built", "float32_range"),
    ]


def test_invocations_name_the_row_in_their_own_format(client: TestClient) -> None:
    columns = list(HOUSE)
    rows = [list(HOUSE.values()), [*list(HOUSE.values())[:1], 1e39, *list(HOUSE.values())[2:]]]

    response = client.post(
        "/models/houses-linear/invocations", json={"dataframe_split": {"columns": columns, "data": rows}}
    )

    assert response.status_code == 422
    assert _problems(response) == [("dataframe_split.data[1].rooms", "float32_range")]


def test_the_largest_float32_is_accepted(client: TestClient) -> None:
    response = client.post("/models/iris-forest/predict", json={**IRIS, "petal_length": FLOAT32_MAX})

    assert response.status_code == 200
    assert response.json()["prediction"] in {"setosa", "versicolor", "virginica"}


def test_an_answer_that_overflows_float32_is_a_422_naming_the_record_never_a_null(client: TestClient) -> None:
    # GIVEN values float32 holds, but which the linear model's arithmetic takes past it
    huge = {**HOUSE, "area_m2": 3e38}

    single = client.post("/models/houses-linear/predict", json=huge)
    batch = client.post("/models/houses-linear/predict", json={"records": [HOUSE, huge]})
    invocations = client.post("/models/houses-linear/invocations", json={"instances": [HOUSE, huge]})

    assert single.status_code == batch.status_code == invocations.status_code == 422
    assert _problems(single) == [("body", "non_finite_prediction")]
    assert _problems(batch) == [("records[1]", "non_finite_prediction")]
    assert _problems(invocations) == [("instances[1]", "non_finite_prediction")]
    # AND the records around it still answer
    assert client.post("/models/houses-linear/predict", json={"records": [HOUSE]}).status_code == 200
