"""Serving scaled out, as deployed: a stack of 2 serving instances with 2 worker processes each, booted
by the local cloud's agent from their user data (each on a port of its own; on AWS a load balancer
stands in front of them). A promotion reaches every worker of every instance, through each
instance's own reload queue on the stack's reload topic, while requests keep being answered."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import serving_bundles
from tests.conftest import PROJECT_ROOT, SERVING_STACK, TEST_STACK_PARAMETERS, LocalCloud
from tests.helpers import eventually
from tests.releases import build_changed_release, publish_to_deploy_bucket

pytestmark = pytest.mark.e2e

# Two instances of two workers each. Only the reload topic can bring a new version within the
# tests' wait: the poll is an hour away.
SERVING_PARAMETERS = {
    **TEST_STACK_PARAMETERS,
    "ServingInstances": "2",
    "ServingWorkers": "2",
    "ServingPollSeconds": "3600",
}
IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
PORT_TAG = "arrival:api-port"


@pytest.fixture(scope="module")
def serving_stack(local_cloud: LocalCloud) -> Iterator[dict[str, str]]:
    """The stack, its servers ended afterwards: six processes the rest of the suite need not share
    the machine with."""
    outputs = local_cloud.deploy(PROJECT_ROOT / "template.yaml", SERVING_STACK, SERVING_PARAMETERS)
    yield outputs
    local_cloud.client("ec2").terminate_instances(InstanceIds=outputs["ServingInstanceIds"].split(","))


def _ports(local_cloud: LocalCloud, instance_ids: list[str]) -> dict[str, int] | None:
    """Each instance's port, once the agent has booted them all."""
    reservations = local_cloud.client("ec2").describe_instances(InstanceIds=instance_ids)["Reservations"]
    tags = {
        instance["InstanceId"]: {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        for reservation in reservations
        for instance in reservation["Instances"]
    }
    ports = {instance_id: int(found[PORT_TAG]) for instance_id, found in tags.items() if PORT_TAG in found}
    return ports if len(ports) == len(instance_ids) else None


class Load:
    """Predictions sent to every instance, back to back, a new connection now and then, until stopped."""

    def __init__(self, clients: list[httpx.Client]) -> None:
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(client,)) for client in clients]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, client: httpx.Client) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            # Every tenth on a connection of its own, so that every worker takes some
            headers = {"connection": "close"} if sent % 10 == 0 else {}
            try:
                response = client.post("/models/iris/predict", json=IRIS_RECORD, headers=headers)
                self.outcomes[str(response.status_code)] += 1
            except httpx.TransportError as error:
                self.outcomes[type(error).__name__] += 1


def _worker_versions(client: httpx.Client, seen: dict[int, str]) -> None:
    """One look at /models/iris on a connection of its own: which worker answered, with which version."""
    try:
        response = client.get("/models/iris", headers={"connection": "close"})
    except httpx.TransportError:
        return
    if response.status_code == 200:
        seen[int(response.headers["x-arrival-worker"])] = response.json()["version"]


def _promote(local_cloud: LocalCloud, serving_stack: dict[str, str], version: str) -> None:
    """ModelPromoted for iris's `version` on the stack's bus, as the trainer sends it."""
    event: dict[str, Any] = {
        "EventBusName": serving_stack["EventBusName"],
        "Source": "arrival",
        "DetailType": "ModelPromoted",
        "Detail": json.dumps({"model": "iris", "version": version}),
    }
    assert local_cloud.client("events").put_events(Entries=[event])["FailedEntryCount"] == 0


def _every_worker_serves(
    local_cloud: LocalCloud, serving_stack: dict[str, str], clients: list[httpx.Client], version: str
) -> None:
    """Wait until every worker of every instance answers with iris's `version`, telling the servers
    of it again now and then: a worker that started before the bundle was there, and after its
    instance's queue first hinted, would otherwise wait for its hour-long poll."""
    seen: list[dict[int, str]] = [{} for _ in clients]
    told = [0.0]

    def every_worker_answers() -> bool:
        for client, workers in zip(clients, seen, strict=True):
            _worker_versions(client, workers)
        if all(len(workers) == 2 and set(workers.values()) == {version} for workers in seen):
            return True
        if time.monotonic() - told[0] > 5:
            _promote(local_cloud, serving_stack, version)
            told[0] = time.monotonic()
        return False

    eventually(every_worker_answers, 180, interval=0.05, what=f"every worker on {version} ({seen})")


@pytest.fixture
def clients(local_cloud: LocalCloud, serving_stack: dict[str, str]) -> Iterator[list[httpx.Client]]:
    instance_ids = serving_stack["ServingInstanceIds"].split(",")
    assert len(instance_ids) == 2
    ports = eventually(lambda: _ports(local_cloud, instance_ids), 120, what="both servers booted")
    assert len(set(ports.values())) == 2  # a port of its own each
    secrets = local_cloud.client("secretsmanager")
    key = secrets.get_secret_value(SecretId=serving_stack["ServingApiKeySecretArn"])["SecretString"]
    made = [
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"x-api-key": key}, timeout=10)
        for port in ports.values()
    ]
    yield made
    for client in made:
        client.close()


def test_a_promotion_reaches_every_worker_of_every_instance_with_no_failed_request(
    local_cloud: LocalCloud, serving_stack: dict[str, str], clients: list[httpx.Client]
) -> None:
    # GIVEN version 1 of a model served by both instances, two workers each
    s3 = local_cloud.client("s3")
    bucket = serving_stack["ModelsBucketName"]
    trained = serving_bundles.trained("iris", "iris")
    serving_bundles.publish(s3, trained, "1", bucket=bucket)
    _every_worker_serves(local_cloud, serving_stack, clients, "1")
    # ...and each instance subscribed a queue of its own to the stack's reload topic
    topic = serving_stack["ServingReloadTopicArn"]
    subscriptions = local_cloud.client("sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    queues = sorted(found["Endpoint"].rsplit(":", 1)[-1] for found in subscriptions)
    instance_ids = serving_stack["ServingInstanceIds"].split(",")
    assert queues == sorted(f"{SERVING_STACK}-serving-reload-{instance_id}" for instance_id in instance_ids)

    # WHEN version 2 is promoted as the trainer promotes it (its bundle, its pointer, then ModelPromoted
    # on the stack's bus), while both instances answer predictions throughout
    with Load(clients) as load:
        eventually(lambda: load.outcomes["200"] >= 50, 30, what="predictions answered before the promotion")
        serving_bundles.publish(s3, trained, "2", bucket=bucket)
        _promote(local_cloud, serving_stack, "2")

        # THEN every worker of every instance answers with version 2 (how soon: benchmarks/), on this
        # one event
        seen: list[dict[int, str]] = [{} for _ in clients]

        def every_worker_answers() -> bool:
            for client, workers in zip(clients, seen, strict=True):
                _worker_versions(client, workers)
            return all(len(workers) == 2 and set(workers.values()) == {"2"} for workers in seen)

        eventually(every_worker_answers, 30, interval=0.05, what=f"every worker on 2 ({seen})")
        answered_before = load.outcomes["200"]
        eventually(lambda: load.outcomes["200"] >= answered_before + 50, 30, what="predictions after it")

    # ...with no failed request, before, during or after the reload
    assert set(load.outcomes) == {"200"}, load.outcomes


def _releases(client: httpx.Client) -> set[str]:
    """The releases that answer /health on a few connections of their own (each may reach another
    worker, or another server on the same socket)."""
    found = set()
    for _ in range(4):
        try:
            found.add(client.get("/health", headers={"connection": "close"}).json()["release"])
        except httpx.TransportError:
            found.add("no answer")
    return found


def test_a_new_release_rolls_every_instance_with_no_failed_request(
    local_cloud: LocalCloud,
    serving_stack: dict[str, str],
    clients: list[httpx.Client],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # GIVEN both instances answering predictions from the release the stack was deployed with
    serving_bundles.publish(
        local_cloud.client("s3"),
        serving_bundles.trained("iris", "iris"),
        "1",
        bucket=serving_stack["ModelsBucketName"],
    )
    _every_worker_serves(local_cloud, serving_stack, clients, "1")
    first = local_cloud.client("cloudformation").describe_stacks(StackName=SERVING_STACK)["Stacks"][0]
    deployed = next(p["ParameterValue"] for p in first["Parameters"] if p["ParameterKey"] == "ReleaseVersion")
    assert all(_releases(client) == {deployed} for client in clients)
    # ...and a second release of the same code, under another version
    second = build_changed_release(tmp_path_factory.mktemp("release"), "the second release of the e2e test")
    assert second.version != deployed
    publish_to_deploy_bucket(local_cloud.session, second)

    with Load(clients) as load:
        eventually(lambda: load.outcomes["200"] >= 50, 60, what="predictions answered before the release")

        # WHEN the stack is deployed with it, as `arrival deploy` does with a new checkout
        parameters = {**SERVING_PARAMETERS, "ReleaseVersion": second.version}
        local_cloud.deploy(PROJECT_ROOT / "template.yaml", SERVING_STACK, parameters)

        # THEN each instance moves to it: its server restarts from the new release on the socket it
        # answers on (every worker of it: _releases asks several times)
        eventually(
            lambda: all(_releases(client) == {second.version} for client in clients),
            120,
            what="both instances on the second release",
        )
        answered_before = load.outcomes["200"]
        eventually(lambda: load.outcomes["200"] >= answered_before + 50, 30, what="predictions after it")

    # ...while every prediction sent before, during and after was answered
    assert set(load.outcomes) == {"200"}, load.outcomes
