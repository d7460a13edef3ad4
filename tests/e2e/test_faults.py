"""Faults injected into the running chain (reliability issue): a trainer dying at each step of a
training, the tracking server killed mid-training, an event lost between the alias and its publish,
the model server crashing and starting again, a file the ingest function cannot handle.
Each test asserts the exact outcome: one version per data list, the champion where it belongs, and
every event sent at least once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from common.layout import trainer_heartbeat_key
from localcloud import control
from localcloud.processes import free_port, process_tree
from tests import datasets
from tests.conftest import INGEST_STACK
from tests.e2e.conftest import Chain, Pipeline
from tests.e2e.test_training import _worker_pids
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def _promoted_events(chain: Chain, model: str) -> list[dict[str, Any]]:
    return [event["body"]["detail"] for event in chain.events.of(("ModelPromoted", model))]


def test_a_promotion_whose_event_was_lost_is_announced_by_the_next_trainer(
    second_chain: Chain, unique: str
) -> None:
    chain = second_chain  # no API needed: the second training lane (tests/conftest.py)
    # GIVEN a promoted version whose trainer died after the alias and the decision, before the event
    model = f"unannounced-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=21))
    version = chain.wait_versions(model, 1)[0]
    eventually(lambda: _promoted_events(chain, model), 30, what="ModelPromoted")
    eventually(
        lambda: "event.published" in chain.mlflow.get_model_version(model, version.version).tags,
        30,
        what="the published mark",
    )
    chain.mlflow.delete_model_version_tag(model, version.version, "event.published")

    # WHEN its job comes back
    chain.requeue(model, f"redelivered-{unique}")

    # THEN the event goes out (again: at least once), for the same version, with nothing retrained
    resent = eventually(lambda: _promoted_events(chain, model)[1:], 120, what="the event sent again")
    assert [event["version"] for event in resent] == [version.version]
    assert [v.version for v in chain.versions(model)] == [version.version]
    assert chain.mlflow.get_model_version(model, version.version).tags["event.published"] == "ModelPromoted"
    assert chain.champion(model) == version.version


def test_a_trainer_that_died_while_registering_leaves_no_version_and_the_next_trains_once(
    second_chain: Chain, unique: str
) -> None:
    chain = second_chain  # no API needed: the second training lane (tests/conftest.py)
    # GIVEN a run that logged everything but whose trainer died before the version was created:
    # its run still RUNNING, no version, no alias, no bundle
    model = f"unregistered-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=22))
    first = chain.wait_versions(model, 1)[0]
    eventually(lambda: _promoted_events(chain, model), 30, what="ModelPromoted")
    chain.mlflow.delete_registered_model_alias(model, "champion")
    chain.mlflow.delete_model_version(model, first.version)
    chain.mlflow.update_run(first.run_id, status="RUNNING")
    models_bucket = chain.outputs["ModelsBucketName"]
    for key in [f"bundles/{model}/{first.version}/bundle.json", f"pointers/{model}.json"]:
        chain.s3.delete_object(Bucket=models_bucket, Key=key)

    # WHEN its job comes back
    chain.requeue(model, f"redelivered-{unique}")

    # THEN the next trainer trains again, registers exactly one version and promotes it
    version = eventually(
        lambda: [v for v in chain.versions(model) if "promotion" in v.tags], 240, what="a new champion"
    )[0]
    assert [v.version for v in chain.versions(model)] == [version.version]
    assert version.run_id != first.run_id
    assert chain.champion(model) == version.version
    assert chain.mlflow.get_run(first.run_id).info.status == "KILLED"
    pointer = json.loads(
        chain.s3.get_object(Bucket=models_bucket, Key=f"pointers/{model}.json")["Body"].read()
    )
    assert pointer["version"] == version.version


def _kill_tracking_server(chain: Chain) -> int:
    pid = int(control.status(chain.cloud.settings)["services"]["mlflow"]["pid"])
    for process in process_tree(pid):
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return pid


def test_the_tracking_server_killed_mid_training_comes_back_and_the_training_completes_once(
    second_chain: Chain, unique: str, tracking_server_alone: Callable[[], AbstractContextManager[None]]
) -> None:
    chain = second_chain  # no API needed: the second training lane (tests/conftest.py)
    model = f"mlflow-down-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=23))
    chain.wait_running_run(model)

    # WHEN the tracking server dies mid-training (the local cloud starts it again, as systemd would)
    with tracking_server_alone():
        killed = _kill_tracking_server(chain)

        # THEN it comes back, and the training finishes with exactly one version, promoted
        eventually(
            lambda: (
                (status := control.status(chain.cloud.settings)["services"]["mlflow"])["pid"] != killed
                and status["alive"]
            ),
            60,
            what="the tracking server restarted",
        )
        # Its process runs before it listens: the other lane's tests wait for it to answer, not only
        # to run (a login test once met "connection refused" in that gap).
        eventually(
            lambda: _answers(f"{chain.cloud.settings.mlflow_url}/health"), 60, what="the server answering"
        )
    versions = chain.wait_versions(model, 1, timeout=300)
    assert len(versions) == 1
    assert chain.champion(model) == versions[0].version
    assert eventually(lambda: _promoted_events(chain, model), 30, what="ModelPromoted")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class ServerProcess:
    """`arrival-serve`, as the serving instance runs it, on a port of its own."""

    def __init__(self, chain: Chain, port: int) -> None:
        self.environment = {
            **os.environ,
            "AWS_ENDPOINT_URL": chain.cloud.endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",  # pragma: allowlist secret  # LocalStack's dummy
            "AWS_DEFAULT_REGION": "us-east-1",
            "ARRIVAL_SERVING_MODELS_BUCKET": chain.outputs["ModelsBucketName"],
            "ARRIVAL_SERVING_HOST": "127.0.0.1",
            "ARRIVAL_SERVING_PORT": str(port),
            # As the instance's user data says: the server reads its key from the stack's secret.
            "ARRIVAL_SERVING_API_KEY_SECRET": chain.outputs["ServingApiKeySecretArn"],
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # our own entry point
            [str(Path(sys.executable).parent / "arrival-serve")],
            env=self.environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def test_a_restarted_server_takes_traffic_only_once_ready_and_never_answers_404_or_500(
    chain: Chain, unique: str
) -> None:
    model = f"restarted-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=24))
    version = chain.wait_versions(model, 1)[0].version
    record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    server = ServerProcess(chain, free_port())
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{server.environment['ARRIVAL_SERVING_PORT']}",
        headers={"x-api-key": chain.api_key()},
        timeout=5,
    )

    def ready() -> bool:
        try:
            return client.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def gated_load(seconds: float) -> Counter[str]:
        """What a load balancer does: route only while the health check says ready."""
        outcomes: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not ready():
                outcomes["held back"] += 1
                continue
            response = client.post(f"/models/{model}/predict", json=record)
            outcomes[f"{response.status_code} v{response.headers.get('X-Model-Version')}"] += 1
        return outcomes

    server.start()
    try:
        eventually(ready, 60, interval=0.1, what="the server ready")
        before = gated_load(2)
        assert set(before) == {f"200 v{version}"}, before

        # WHEN the server crashes and starts again, with a client knocking all along
        server.crash()
        server.start()
        during: Counter[str] = Counter()
        while not ready():
            try:
                during[str(client.post(f"/models/{model}/predict", json=record).status_code)] += 1
            except httpx.TransportError:
                during["connection refused"] += 1

        # THEN while it starts it refuses connections or says "not loaded yet, retry" (503), never
        # "no such model" (404) or a server error; once ready, every routed request is answered
        # (a 200 when the model loaded between the last look at /ready and the request)
        assert set(during) <= {"connection refused", "503", "200"}, during
        after = gated_load(2)
        assert set(after) == {f"200 v{version}"}, after
    finally:
        server.crash()
        client.close()


def test_a_file_the_ingest_function_cannot_handle_is_dead_lettered_with_its_reason_and_redriven(
    pipeline: Pipeline, unique: str
) -> None:
    # GIVEN a model whose contract in the bucket is broken (an operator's typo)
    model = f"broken-{unique}"
    pipeline.put_contract(model, b"model: " + model.encode() + b"\ntask: [classification\n")
    key = f"{model}/data.csv"
    pipeline.upload(key, datasets.noisy_iris_csv(100, seed=25))
    sqs = pipeline.sqs

    def dead_lettered() -> dict[str, Any] | None:
        for message in sqs.receive_message(
            QueueUrl=pipeline.outputs["IngestDeadLetterQueueUrl"],
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            VisibilityTimeout=0,
        ).get("Messages", []):
            if key in message["Body"]:
                return message  # type: ignore[no-any-return]
        return None

    # THEN after its retries it is in the dead-letter queue, saying why and what to do
    message = eventually(dead_lettered, 180, interval=0, what="the file's notification dead-lettered")
    reason = message["MessageAttributes"]["failure_reason"]["StringValue"]
    assert f"contracts/{model}.yaml is not valid" in reason and "arrival redrive ingest" in reason
    assert pipeline.accepted(model) is None

    # WHEN the contract is fixed and the dead letters are replayed
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    result = CliRunner().invoke(app, ["redrive", "ingest", "--stack-name", INGEST_STACK])
    assert result.exit_code == 0, result.output
    assert "moved" in result.output

    # THEN the file is accepted, once
    accepted = pipeline.wait_accepted(model, 1)
    assert [entry["source"]["key"] for entry in accepted["datasets"]] == [key]
    assert dead_lettered() is None


def test_a_frozen_trainer_stops_beating_and_the_reconciler_replaces_it(
    second_chain: Chain, unique: str
) -> None:
    chain = second_chain  # no API needed: the second training lane (tests/conftest.py)
    # GIVEN a trainer that hangs mid-training (on AWS: an instance that stays "running" for ever)
    model = f"frozen-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=26))
    chain.wait_running_run(model)
    frozen_instances = {instance["InstanceId"] for instance in chain.trainers()}
    frozen = [pid for worker in _worker_pids(chain.cloud, chain.stack) for pid in process_tree(worker)]
    assert frozen_instances and frozen

    # It was beating (so its id came from instance metadata): the reconciler must find the beat
    # stopped, not merely the boot grace over.
    def beating_for_the_model(instance_id: str) -> bool:
        with contextlib.suppress(chain.cloud.client("s3").exceptions.NoSuchKey):
            heartbeat = chain.cloud.client("s3").get_object(
                Bucket=chain.outputs["ProcessedBucketName"], Key=trainer_heartbeat_key(instance_id)
            )
            return bool(json.loads(heartbeat["Body"].read())["model"] == model)
        return False

    for instance_id in frozen_instances:
        eventually(lambda: beating_for_the_model(instance_id), 10, what=f"{instance_id}'s heartbeat")  # noqa: B023
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):  # a short-lived child that has just exited
            os.kill(pid, signal.SIGSTOP)
    try:
        # WHEN the reconciler runs (on its schedule; invoked here so the test need not wait a minute)
        # THEN the frozen trainer is terminated and a new one trains the job, once
        eventually(
            lambda: chain.replace_stale_trainers(frozen_instances),
            120,
            interval=2,
            what="the frozen trainer replaced",
        )
        versions = chain.wait_versions(model, 1, timeout=300)
        assert len(versions) == 1
        assert chain.champion(model) == versions[0].version
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
