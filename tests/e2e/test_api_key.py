"""The serving API's key end to end: the stack creates it in Secrets Manager, the serving instance
reads it with its own role and checks it, API Gateway checks it before the Lambda function runs, and
neither path answers, or captures, a request without it. Only the probes stay open."""

from __future__ import annotations

import gzip
import json
import uuid

import httpx
import pytest
import yaml

from tests import datasets
from tests.e2e.conftest import Chain
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The wrong key is as long as a right one and of the same letters: refused for its value alone.
WRONG_KEY = "A" * 40


def _contract_capturing_everything(model: str) -> bytes:
    document = yaml.safe_load(datasets.contract_yaml("iris", model))
    document["monitoring"] = {"sample_rate": 1.0}
    return yaml.safe_dump(document).encode()


def _captured_request_ids(chain: Chain, model: str) -> set[str]:
    bucket = chain.outputs["CaptureBucketName"]
    listed = chain.s3.list_objects_v2(Bucket=bucket, Prefix=f"{model}/capture/").get("Contents", [])
    found = set()
    for entry in listed:
        body = chain.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        found |= {json.loads(line)["request_id"] for line in gzip.decompress(body).splitlines()}
    return found


def _without_key(client: httpx.Client) -> httpx.Client:
    """The same API, asked with no key at all."""
    return httpx.Client(base_url=client.base_url, timeout=client.timeout)


def _predict(client: httpx.Client, model: str, request_id: str, **headers: str) -> httpx.Response:
    return client.post(
        f"/models/{model}/predict", json=RECORD, headers={"x-request-id": request_id, **headers}
    )


@pytest.fixture(scope="module")
def keyed_model(chain: Chain) -> str:
    """One champion whose contract captures every request, trained once for both paths."""
    model = f"key-{uuid.uuid4().hex[:10]}"
    chain.put_contract(model, _contract_capturing_everything(model))
    chain.upload(f"{model}/train.csv", datasets.noisy_iris_csv(200, seed=4, noise=0.2))
    chain.wait_versions(model, 1)
    return model


@pytest.mark.parametrize("path", ["ec2", "lambda"])
def test_only_requests_with_the_stacks_key_are_answered_and_captured(
    api: httpx.Client, lambda_api: httpx.Client, chain: Chain, keyed_model: str, path: str, unique: str
) -> None:
    # GIVEN a champion whose contract captures every request, served on both paths
    client = api if path == "ec2" else lambda_api
    model = keyed_model
    eventually(lambda: client.get(f"/models/{model}").status_code == 200, 60, what=f"{path} serving it")
    anonymous = _without_key(client)

    # WHEN it is asked without a key, with a wrong one, and with the stack's
    missing = _predict(anonymous, model, f"missing-{unique}")
    wrong = _predict(anonymous, model, f"wrong-{unique}", **{"x-api-key": WRONG_KEY})
    right = _predict(client, model, f"right-{unique}")

    # THEN only the last is answered
    assert (missing.status_code, wrong.status_code, right.status_code) == (403, 403, 200), right.text
    assert right.json()["prediction"] in datasets.SPECIES
    # AND the model's description, its lineage and the metrics need the key too; the probes do not
    assert anonymous.get(f"/models/{model}").status_code == 403
    assert anonymous.get("/models").status_code == 403
    assert anonymous.get("/metrics").status_code == 403
    assert anonymous.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200

    # AND capture holds the answered request and neither refused one (the instance writes within its
    # flush interval, the function before it answers)
    def answered_one_captured() -> set[str] | None:
        found = _captured_request_ids(chain, model)
        return found if f"right-{unique}" in found else None

    captured = eventually(answered_one_captured, 60, what="the answered request captured")
    assert not captured & {f"missing-{unique}", f"wrong-{unique}"}, captured
