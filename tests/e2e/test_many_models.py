"""Many models at once (issue 21): files for four models uploaded together are trained side by side by
the trainers the reconciler starts (the stack's MaxTrainers is 4), each model promoted once, and one
model's jobs still in order."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import datasets
from tests.e2e.conftest import Chain
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

HEARTBEATS = "_arrival/trainers/"


def _training_now(chain: Chain) -> dict[str, str]:
    """{trainer instance: model} for every trainer whose heartbeat says it trains one now."""
    bucket = chain.outputs["ProcessedBucketName"]
    listed = chain.s3.list_objects_v2(Bucket=bucket, Prefix=HEARTBEATS, Delimiter="/").get("Contents", [])
    training = {}
    for entry in listed:
        try:
            beat = json.loads(chain.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read())
        except chain.s3.exceptions.NoSuchKey:  # a trainer that just ended
            continue
        if beat.get("model"):
            training[beat["instance_id"]] = beat["model"]
    return training


def test_models_uploaded_together_train_side_by_side_each_promoted_once_in_order(
    chain: Chain, unique: str
) -> None:
    # GIVEN four models with contracts
    models = [f"many-{unique}-{index}" for index in range(4)]
    for model in models:
        chain.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN a file for each is uploaded at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(
            pool.map(
                lambda index: chain.upload(
                    f"{models[index]}/data.csv", datasets.noisy_iris_csv(400, seed=index)
                ),
                range(4),
            )
        )

    # THEN at some moment two trainers or more train different models of them at the same time
    most_at_once: dict[str, str] = {}
    deadline = time.monotonic() + 300
    while not all(chain.champion(model) for model in models):
        assert time.monotonic() < deadline, "not every model was promoted"
        ours = {instance: model for instance, model in _training_now(chain).items() if model in models}
        if len(set(ours.values())) > len(set(most_at_once.values())):
            most_at_once = ours
    assert len(set(most_at_once)) >= 2 and len(set(most_at_once.values())) >= 2, most_at_once

    # AND each model was trained and promoted once
    for model in models:
        (version,) = chain.versions(model)
        assert chain.champion(model) == version.version

    # AND a model's next file trains its next version, on both files
    first = chain.versions(models[0])[0]
    chain.upload(f"{models[0]}/more.csv", datasets.noisy_iris_csv(400, seed=99))
    second = chain.wait_versions(models[0], 2)[-1]
    assert int(second.version) == int(first.version) + 1
    assert second.tags["accepted_list_hash"] != first.tags["accepted_list_hash"]
    files = eventually(
        lambda: json.loads(
            chain.s3.get_object(
                Bucket=chain.outputs["ProcessedBucketName"], Key=f"{models[0]}/accepted.json"
            )["Body"].read()
        )["datasets"],
        30,
        what="the accepted list",
    )
    assert [entry["source"]["key"] for entry in files] == [f"{models[0]}/data.csv", f"{models[0]}/more.csv"]
