"""`arrival status` model by model, against moto: one model's problem is shown as that model's, and
never stops the report of the others."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

import common.ingest  # noqa: F401  # status imports it late; its tracer opens a socket at import
from cli import status
from common.adapters import s3

OUTPUTS = {
    "ConfigBucketName": "unit-config",
    "ProcessedBucketName": "unit-processed",
    "ModelsBucketName": "unit-models",
    "QuarantineBucketName": "unit-quarantine",
}


@pytest.fixture
def buckets(aws_credentials: None) -> Iterator[None]:
    s3.s3_client.cache_clear()
    with mock_aws():
        for bucket in OUTPUTS.values():
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield
    s3.s3_client.cache_clear()


@pytest.mark.usefixtures("buckets")
@pytest.mark.parametrize(
    ("contract", "phrase"),
    [
        (b"model: broken\ntask: [classification\n", "while parsing a flow sequence"),
        (b"model: broken\ntask: clustering\n", "validation error"),
    ],
)
def test_a_broken_contract_is_its_models_problem_not_a_crash(contract: bytes, phrase: str) -> None:
    # GIVEN a model whose contract in the bucket no longer parses (an operator's typo)
    s3.put_bytes(OUTPUTS["ConfigBucketName"], "contracts/broken.yaml", contract)

    # WHEN its status is read
    report = status._model_status(
        "broken", OUTPUTS, None, None, ingest_dead_letters=0, training_dead_letters=0, registry_up=False
    )

    # THEN it says what is wrong with that contract and what to run
    assert report["contract"] is True and report["metric"] is None
    assert phrase in report["contract_error"]
    assert any(
        "the contract is not valid" in problem and "arrival contract put broken.yaml" in problem
        for problem in report["problems"]
    ), report["problems"]
