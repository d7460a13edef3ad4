"""Hostile request bodies on both prediction routes: each is refused with a 4xx that names the field and
the rule, in bounded time, and never reaches the 500 path. (tests/unit/test_serving_api.py covers the
ordinary refusals: malformed JSON, NaN and Infinity, a body or batch over the limit, a wrong content
type.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
HOUSE_RECORD = {"area_m2": 120.0, "rooms": 5, "year_built": 1990, "district": "north", "heating": "gas"}
# The production default (6 MiB), so the nesting and number cases are parsed rather than cut off.
MAX_BODY_BYTES = 6 * 1024 * 1024
ROUTES = ["predict", "invocations"]
# Each case is answered in milliseconds; this only turns a hang into a failure.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the module: every case here is refused, so none changes what the next one sees."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        with serving_bundles.models_bucket() as s3:
            publish(s3, serving_bundles.trained("iris", "iris"), "1")
            publish(s3, serving_bundles.trained("house-prices", "house-prices"), "7")
            store = ModelStore(MODELS_BUCKET, max_batch=100)
            settings = ServingSettings(
                models_bucket=MODELS_BUCKET, max_batch=100, max_body_bytes=MAX_BODY_BYTES
            )
            app = create_app(settings, store=store, api_key=None)
            store.refresh()
            yield TestClient(app)


def _post(client: TestClient, model: str, route: str, record: bytes) -> Any:
    """`record` (raw JSON text) as a predict body, or inside an MLflow `instances` list."""
    body = record if route == "predict" else b'{"instances": [' + record + b"]}"
    return client.post(f"/models/{model}/{route}", content=body, headers={"Content-Type": "application/json"})


def _refusal(response: Any) -> tuple[int, str, str, str]:
    problem = response.json()["detail"][0]
    return response.status_code, problem["field"], problem["rule"], problem["message"]


def _iris_with(old: bytes, new: bytes) -> bytes:
    text = json.dumps(IRIS_RECORD).encode()
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000],
    ids=["arrays", "objects"],
)
def test_json_nested_100_000_deep_is_a_400(client: TestClient, route: str, body: bytes) -> None:
    response = client.post(
        f"/models/iris/{route}", content=body, headers={"Content-Type": "application/json"}
    )

    status, field, rule, message = _refusal(response)
    assert (status, field, rule) == (400, "body", "json_invalid")
    assert "recursion limit" in message or "nested too deeply" in message


@pytest.mark.parametrize("route", ROUTES)
def test_nesting_inside_a_field_is_a_400(client: TestClient, route: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    response = _post(client, "iris", route, _iris_with(b"5.1", deep))

    assert _refusal(response)[:3] == (400, "body", "json_invalid")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
def test_a_50_mb_body_is_a_413_without_reading_it_all(client: TestClient, route: str, streamed: bool) -> None:
    block = b" " * (1024 * 1024)
    body: Any = (block for _ in range(50)) if streamed else block * 50

    response = client.post(
        f"/models/iris/{route}", content=body, headers={"Content-Type": "application/json"}
    )

    assert _refusal(response)[:3] == (413, "body", "body_too_large")


@pytest.mark.parametrize("route", ROUTES)
def test_an_integer_of_100_000_digits_is_a_400(client: TestClient, route: str) -> None:
    response = _post(client, "iris", route, _iris_with(b"5.1", b"9" * 100_000))

    status, field, rule, message = _refusal(response)
    assert (status, field, rule) == (400, "body", "json_invalid")
    assert "number out of range" in message or "digits" in message


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "number", [b"1e999999", b"-1e999999", b"9" * 400], ids=["exp", "neg_exp", "400_digits"]
)
def test_a_number_beyond_float_is_a_422_at_its_field(client: TestClient, route: str, number: bytes) -> None:
    response = _post(client, "iris", route, _iris_with(b"5.1", number))

    status, field, rule, _ = _refusal(response)
    assert (status, field.rsplit(".", 1)[-1]) == (422, "sepal_length")
    assert rule in {"finite_number", "float_type"}


@pytest.mark.parametrize("route", ROUTES)
def test_a_duplicate_key_is_read_as_its_last_value_on_both_routes(client: TestClient, route: str) -> None:
    # Both parsers (pydantic's on predict, Python's on invocations) keep the last value, as most JSON
    # parsers do (RFC 8259, 4): the value validated and refused is the one the model would have seen.
    response = _post(
        client, "iris", route, _iris_with(b'"sepal_width": 3.5', b'"sepal_width": 3.5, "sepal_width": 99')
    )

    status, field, rule, _ = _refusal(response)
    assert (status, field.rsplit(".", 1)[-1], rule) == (422, "sepal_width", "less_than_equal")


@pytest.mark.parametrize("route", ROUTES)
def test_a_raw_nul_byte_in_a_string_is_a_400(client: TestClient, route: str) -> None:
    response = _post(client, "iris", route, _iris_with(b'"sepal_width"', b'"sepal\x00width"'))

    status, field, rule, message = _refusal(response)
    assert (status, field, rule) == (400, "body", "json_invalid")
    assert "control character" in message


@pytest.mark.parametrize("route", ROUTES)
def test_an_escaped_nul_in_a_field_name_is_an_unknown_field(client: TestClient, route: str) -> None:
    response = _post(client, "iris", route, _iris_with(b'"sepal_width"', b'"sepal_width\\u0000"'))

    problems = {(p["field"].rsplit(".", 1)[-1], p["rule"]) for p in response.json()["detail"]}
    assert response.status_code == 422
    assert problems == {("sepal_width\x00", "extra_forbidden"), ("sepal_width", "missing")}


@pytest.mark.parametrize("route", ROUTES)
def test_an_escaped_nul_in_a_category_is_not_a_category(client: TestClient, route: str) -> None:
    record = json.dumps({**HOUSE_RECORD, "district": "nor\x00th"}).encode()

    response = _post(client, "house-prices", route, record)

    status, field, rule, message = _refusal(response)
    assert (status, field.rsplit(".", 1)[-1], rule) == (422, "district", "literal_error")
    assert "'north'" in message


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("old", "new"),
    [(b'"sepal_width"', b'"sepal\xff\xfewidth"'), (b"5.1", b'"5\xc3\x28"')],
    ids=["in_a_name", "in_a_value"],
)
def test_invalid_utf8_is_a_400(client: TestClient, route: str, old: bytes, new: bytes) -> None:
    response = _post(client, "iris", route, _iris_with(old, new))

    assert _refusal(response)[:3] == (400, "body", "json_invalid")


@pytest.mark.parametrize("route", ROUTES)
def test_a_lone_surrogate_escape_is_refused(client: TestClient, route: str) -> None:
    response = _post(client, "iris", route, _iris_with(b'"sepal_width"', b'"sepal\\ud800width"'))

    assert response.status_code in {400, 422}
    assert response.json()["detail"][0]["rule"] in {"json_invalid", "string_unicode"}


@pytest.mark.parametrize("route", ROUTES)
def test_a_unicode_field_name_is_named_back_as_an_unknown_field(client: TestClient, route: str) -> None:
    response = _post(client, "iris", route, _iris_with(b'"sepal_width"', '"sépal_wïdth_🌸"'.encode()))

    problems = {(p["field"].rsplit(".", 1)[-1], p["rule"]) for p in response.json()["detail"]}
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert problems == {("sépal_wïdth_🌸", "extra_forbidden"), ("sepal_width", "missing")}
