"""Serving end to end: the serving instance the stack declares (booted by the local EC2 agent, as AWS
would start it) and the same app on Lambda behind API Gateway, both answering with each model's
champion, switching on promotion and rollback without a failed request, and carrying on while the
MLflow server does not answer."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from localcloud.processes import process_tree
from tests import datasets
from tests.conftest import TRAINING_STACK, LocalCloud
from tests.e2e.conftest import Chain, arrival
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def _served_version(client: httpx.Client, model: str) -> str | None:
    try:
        response = client.get(f"/models/{model}")
    except httpx.TransportError:
        return None
    return str(response.json()["version"]) if response.status_code == 200 else None


def _iris_record() -> dict[str, Any]:
    row = datasets.iris_frame(1, seed=5).iloc[0]
    return {name: float(row[name]) for name in ["sepal_length", "sepal_width", "petal_length", "petal_width"]}


class LoadGenerator:
    """Clients that keep asking for predictions and keep every answer's status and version."""

    def __init__(self, api: httpx.Client, model: str, record: dict[str, Any], clients: int = 2) -> None:
        self.base_url, self.headers, self.model, self.record = str(api.base_url), api.headers, model, record
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"/models/{self.model}/predict", json=self.record)
                except httpx.TransportError as error:
                    with self._lock:
                        self.errors.append(repr(error))
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    self.versions.append(response.headers.get("x-model-version", ""))
                # A few hundred requests a second between them: steady traffic across the switch,
                # without taking the cores the training it waits for needs (the suite runs in parallel).
                self._stop.wait(0.005)

    def latest_version(self) -> str | None:
        with self._lock:
            return self.versions[-1] if self.versions else None

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


@contextmanager
def mlflow_frozen(cloud: LocalCloud) -> Iterator[None]:
    """The MLflow server stops answering (every process of it is stopped), then resumes."""
    from localcloud import control

    pids = process_tree(control.status(cloud.settings)["services"]["mlflow"]["pid"])
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _status(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    status = arrival(cloud, monkeypatch, "status", "--json", "--stack-name", TRAINING_STACK)
    assert status.exit_code == 0, status.output
    report: dict[str, Any] = json.loads(status.output)
    return report


def test_serving_follows_each_promotion_and_rollback_without_a_failed_request(
    chain: Chain,
    api: httpx.Client,
    local_cloud: LocalCloud,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    tracking_server_alone: Callable[[], AbstractContextManager[None]],
) -> None:
    # GIVEN a model whose first dataset made a champion
    model = f"serve-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/small-noisy.csv", datasets.noisy_iris_csv(60, seed=2, noise=1.5))
    first = chain.wait_versions(model, 1)[0]
    assert chain.champion(model) == first.version

    # THEN the serving instance answers with it, without a restart
    eventually(lambda: _served_version(api, model) == first.version, 30, what="the first champion served")
    answer = api.post(f"/models/{model}/predict", json=_iris_record())
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == first.version
    assert answer.json()["prediction"] in datasets.SPECIES
    assert set(answer.json()["probabilities"]) == set(datasets.SPECIES)
    assert f"/models/{model}/predict" in api.get("/openapi.json").json()["paths"]

    # WHEN a better dataset arrives while clients keep asking
    with LoadGenerator(api, model, _iris_record()) as load:
        eventually(load.latest_version, 10, what="the load generator's first answer")
        chain.upload(f"{model}/large-clean.csv", datasets.noisy_iris_csv(600, seed=3, noise=0.2))
        second = chain.wait_versions(model, 2)[-1]
        assert "promotion" in second.tags, second.tags
        eventually(lambda: load.latest_version() == second.version, 30, what="the new champion served")

    # THEN serving switched versions and not one request failed
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses
    assert {first.version, second.version} <= set(load.versions)
    switched_at = load.versions.index(second.version)
    assert first.version not in load.versions[switched_at + 50 :]  # no flapping back once switched

    # WHEN the operator rolls back
    rolled = CliRunner().invoke(app, ["rollback", "--model", model, "--stack-name", TRAINING_STACK])

    # THEN the alias and serving go back to the first version
    assert rolled.exit_code == 0, rolled.output
    assert chain.champion(model) == first.version
    eventually(lambda: _served_version(api, model) == first.version, 30, what="the rollback served")

    # WHEN a third version is promoted, and the operator rolls back again without naming a version
    chain.upload(f"{model}/more-clean.csv", datasets.noisy_iris_csv(300, seed=4, noise=0.2))
    third = chain.wait_versions(model, 3)[-1]
    assert "promotion" in third.tags, third.tags
    eventually(lambda: _served_version(api, model) == third.version, 30, what="the third champion served")
    again = CliRunner().invoke(app, ["rollback", "--model", model, "--stack-name", TRAINING_STACK])

    # THEN the first version serves again, not the second that was rolled back away from
    assert again.exit_code == 0, again.output
    assert chain.champion(model) == first.version
    eventually(lambda: _served_version(api, model) == first.version, 30, what="the second rollback served")
    # AND status marks the versions pulled from serving
    shown = next(
        entry for entry in _status(local_cloud, monkeypatch)["stack"]["models"] if entry["name"] == model
    )
    decisions = {version["version"]: version["decision"] for version in shown["versions"]}
    assert decisions[second.version] == decisions[third.version] == "promoted, rolled back", decisions
    assert decisions[first.version] == "promoted", decisions

    # AND while the MLflow server answers nobody, serving keeps answering, and keeps loading new
    # champions from their bundles (a pointer moved straight in S3, as the trainer does)
    bucket = chain.outputs["ModelsBucketName"]
    pointer = json.loads(chain.s3.get_object(Bucket=bucket, Key=f"pointers/{model}.json")["Body"].read())
    # the other training lane's trainings need the tracking server: none runs while it is frozen
    with tracking_server_alone(), mlflow_frozen(local_cloud):
        assert api.post(f"/models/{model}/predict", json=_iris_record()).status_code == 200
        moved = {
            **pointer,
            "version": second.version,
            "manifest_key": pointer["manifest_key"].replace(f"/{first.version}/", f"/{second.version}/"),
        }
        chain.s3.put_object(Bucket=bucket, Key=f"pointers/{model}.json", Body=json.dumps(moved).encode())
        eventually(lambda: _served_version(api, model) == second.version, 30, what="a load without MLflow")
        assert api.post(f"/models/{model}/predict", json=_iris_record()).status_code == 200

    # AND status reports that serving's pointer and the registry's alias now disagree
    models = _status(local_cloud, monkeypatch)["stack"]["models"]
    reported = next(entry for entry in models if entry["name"] == model)
    assert (reported["champion"], reported["serving"]["pointer"]) == (first.version, second.version)
    assert any("disagree" in problem for problem in reported["problems"])


def test_the_lambda_api_answers_as_the_serving_instance_does(
    chain: Chain, api: httpx.Client, lambda_api: httpx.Client, unique: str
) -> None:
    # GIVEN a regression champion with categorical and nullable features
    model = f"houses-{unique}"
    chain.put_contract(model, datasets.contract_yaml("house-prices", model))
    chain.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(400, seed=3)))
    version = chain.wait_versions(model, 1)[0]
    assert chain.champion(model) == version.version
    eventually(lambda: _served_version(api, model) == version.version, 30, what="the instance serving it")

    # WHEN both paths are asked for the same records, some with missing values
    rows = datasets.house_frame(25, seed=99).drop(columns=["price"])
    records = json.loads(rows.to_json(orient="records"))
    assert any(record["heating"] is None for record in records)
    from_instance = api.post(f"/models/{model}/predict", json={"records": records})

    def lambda_answer() -> httpx.Response | None:
        r = lambda_api.post(f"/models/{model}/predict", json={"records": records})
        return r if r.status_code == 200 else None

    from_lambda = eventually(lambda_answer, 60, what="the Lambda API answering")

    # THEN they give the same version and the same predictions
    assert from_instance.status_code == 200, from_instance.text
    assert (
        from_lambda.headers["x-model-version"] == from_instance.headers["x-model-version"] == version.version
    )
    assert from_lambda.json()["predictions"] == from_instance.json()["predictions"]
    # AND a user's mistake is a 4xx naming the field on Lambda too
    wrong = lambda_api.post(f"/models/{model}/predict", json={**records[0], "rooms": "many"})
    assert wrong.status_code == 422
    assert "rooms" in wrong.text
