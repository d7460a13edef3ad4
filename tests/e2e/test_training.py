"""Training end to end: uploads start a trainer instance (booted by the local EC2 agent), which runs
the DVC pipeline, logs to the MLflow server, registers a version and moves `champion` only when the
challenger is better."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from localcloud.processes import cloud_processes
from tests import datasets
from tests.conftest import LocalCloud
from tests.e2e.conftest import Chain
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chain(second_chain: Chain) -> Chain:
    """This module runs on the second training stack, in a lane of its own (tests/conftest.py): it
    needs trainers and the registry, not the API."""
    return second_chain


def test_an_upload_trains_registers_and_promotes_a_first_champion(chain: Chain, unique: str) -> None:
    # GIVEN a new model and no trainer
    model = f"first-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN its first dataset lands
    chain.upload(f"{model}/day-1.csv", datasets.noisy_iris_csv(200, seed=1))

    # THEN a version is registered and becomes the champion
    version = chain.wait_versions(model, 1)[0]
    assert chain.champion(model) == version.version
    # The run ends just after the gate's decision is recorded.
    assert eventually(
        lambda: chain.mlflow.get_run(version.run_id).info.status == "FINISHED", 30, what="FINISHED"
    )
    run = chain.mlflow.get_run(version.run_id)
    assert run.data.metrics["f1_macro"] > 0.6
    assert run.data.metrics["onnx_label_agreement"] == 1.0
    assert json.loads(run.data.tags["lineage.sources"])[0].startswith(
        f"s3://{chain.outputs['RawBucketName']}/{model}/day-1.csv?versionId="
    )
    # AND the run's artifacts are in the S3 artifact bucket behind the tracking server
    artifacts = chain.s3.list_objects_v2(Bucket=chain.cloud.settings.mlflow_artifact_bucket).get(
        "Contents", []
    )
    keys = [item["Key"] for item in artifacts if version.run_id in item["Key"]]
    assert any(key.endswith("onnx/model.onnx") for key in keys), keys
    assert any(key.endswith("workspace/dvc.lock") for key in keys), keys
    # AND ModelPromoted went out with the name, version, metrics and lineage
    promoted_events = eventually(lambda: chain.events.of(("ModelPromoted", model)), 30, what="ModelPromoted")
    promoted = promoted_events[0]["body"]["detail"]
    assert promoted["version"] == version.version
    assert promoted["metrics"]["f1_macro"] == run.data.metrics["f1_macro"]
    assert promoted["lineage"] == json.loads(run.data.tags["lineage.sources"])
    # AND serving's copy: the bundle (ONNX model, contract, metrics, lineage) and the pointer to it
    bucket = chain.outputs["ModelsBucketName"]
    pointer = json.loads(chain.s3.get_object(Bucket=bucket, Key=f"pointers/{model}.json")["Body"].read())
    assert pointer["version"] == version.version
    manifest = json.loads(chain.s3.get_object(Bucket=bucket, Key=pointer["manifest_key"])["Body"].read())
    assert manifest["contract"]["model"] == model
    assert manifest["metrics"]["f1_macro"] == run.data.metrics["f1_macro"]
    assert manifest["lineage"]["sources"] == promoted["lineage"]
    assert "prepare:" in manifest["lineage"]["dvc_lock"]
    onnx = chain.s3.get_object(Bucket=bucket, Key=manifest["onnx"]["key"])["Body"].read()
    assert len(onnx) == manifest["onnx"]["size_bytes"]


def test_a_better_dataset_moves_the_champion_and_a_worse_one_does_not(chain: Chain, unique: str) -> None:
    model = f"gate-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/small-noisy.csv", datasets.noisy_iris_csv(60, seed=2, noise=1.5))
    first = chain.wait_versions(model, 1)[0]
    assert chain.champion(model) == first.version

    # A better dataset: much more, cleaner data
    chain.upload(f"{model}/large-clean.csv", datasets.noisy_iris_csv(600, seed=3, noise=0.2))
    second = chain.wait_versions(model, 2)[-1]
    assert "promotion" in second.tags, second.tags
    assert chain.champion(model) == second.version

    # A worse dataset: twice as many rows again, with their labels shuffled
    shuffled = datasets.noisy_iris_frame(1200, seed=4, noise=0.2)
    shuffled["species"] = shuffled["species"].sample(frac=1, random_state=5).to_numpy()
    chain.upload(f"{model}/shuffled.csv", datasets.to_csv(shuffled))
    third = chain.wait_versions(model, 3)[-1]
    assert "rejected" in third.tags, third.tags
    assert "f1_macro" in third.tags["rejected"]  # the reason names the metric and the threshold it missed
    assert chain.champion(model) == second.version
    rejected = eventually(lambda: chain.events.of(("ModelRejected", model)), 30, what="ModelRejected")
    assert rejected[0]["body"]["detail"]["version"] == third.version


def test_ten_uploads_in_a_burst_give_one_version_with_all_ten_files(chain: Chain, unique: str) -> None:
    model = f"burst-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    for part in range(10):
        chain.upload(f"{model}/part-{part}.csv", datasets.noisy_iris_csv(40, seed=100 + part))

    version = chain.wait_versions(model, 1)[0]
    sources = json.loads(chain.mlflow.get_run(version.run_id).data.tags["lineage.sources"])
    assert sorted(source.split("?")[0].rsplit("/", 1)[-1] for source in sources) == [
        f"part-{n}.csv" for n in range(10)
    ]
    # Every job the burst queued was covered by that one training: no second version appears.
    sqs = chain.cloud.client("sqs")

    def queue_empty() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=chain.outputs["TrainingQueueUrl"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(value == "0" for value in attributes.values())

    assert eventually(queue_empty, 60, what="the training queue to empty")
    assert len(chain.versions(model)) == 1


def test_a_file_arriving_during_a_training_supersedes_it_and_one_version_covers_both(
    chain: Chain, unique: str
) -> None:
    # GIVEN a training that takes a few seconds, started on the first file before the quiet period
    # is over (the period runs alongside the training)
    model = f"superseded-{unique}"
    contract = yaml.safe_load(datasets.contract_yaml("iris", model))
    contract["training"]["params"] = {"n_estimators": 400}
    chain.put_contract(model, yaml.safe_dump(contract).encode())
    chain.upload(f"{model}/first.csv", datasets.noisy_iris_csv(3000, seed=21))
    first = eventually(lambda: _runs(chain, model, "RUNNING"), 180, interval=0.1, what="a RUNNING run")[0]

    # WHEN a second file arrives while it runs
    chain.upload(f"{model}/second.csv", datasets.noisy_iris_csv(300, seed=22))

    # THEN that training is dropped, and one version covers both files
    version = chain.wait_versions(model, 1)[0]
    dropped = chain.mlflow.get_run(first.info.run_id)
    assert dropped.info.status == "KILLED"
    assert "changed" in dropped.data.tags["superseded"]
    sources = json.loads(chain.mlflow.get_run(version.run_id).data.tags["lineage.sources"])
    assert sorted(source.split("?")[0].rsplit("/", 1)[-1] for source in sources) == [
        "first.csv",
        "second.csv",
    ]
    assert len(chain.versions(model)) == 1


def _runs(chain: Chain, model: str, status: str) -> list[Any]:
    experiments = chain.mlflow.search_experiments(filter_string=f"name = '{model}'")
    if not experiments:
        return []
    runs = chain.mlflow.search_runs([experiment.experiment_id for experiment in experiments])
    return [run for run in runs if run.info.status == status]


def _worker_pids(cloud: LocalCloud, stack: str) -> list[int]:
    """The workers of this cloud's trainers of one stack (the other training lane's are left alone)."""
    return cloud_processes(cloud.settings.cloud_id, "arrival-worker", (f"ARRIVAL_STACK_NAME={stack}",))


def test_a_worker_killed_mid_training_is_restarted_on_its_instance_and_the_job_completes_once(
    chain: Chain, unique: str
) -> None:
    model = f"crash-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))

    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=7))

    # WHEN the worker is killed while its MLflow run is RUNNING
    running = eventually(lambda: _runs(chain, model, "RUNNING"), 180, interval=0.1, what="a RUNNING run")[0]
    killed = _worker_pids(chain.cloud, chain.stack)
    assert killed
    instances = {instance["InstanceId"] for instance in chain.trainers()}
    for pid in killed:
        os.kill(pid, signal.SIGKILL)

    # THEN its supervisor (systemd's Restart=always on EC2, deploy/arrival-boot.sh; the agent here)
    # starts it again on the same instance, which takes the job back once its lease lapses and
    # finishes it once
    eventually(
        lambda: set(_worker_pids(chain.cloud, chain.stack)) - set(killed), 30, what="the worker restarted"
    )
    assert {instance["InstanceId"] for instance in chain.trainers()} == instances
    versions = chain.wait_versions(model, 1, timeout=300)
    assert len(versions) == 1
    assert versions[0].run_id != running.info.run_id
    assert chain.champion(model) == versions[0].version
    # and the dead worker's run is not left looking alive
    assert chain.mlflow.get_run(running.info.run_id).info.status == "KILLED"


def test_a_version_registered_by_a_trainer_that_died_before_the_gate_acted_is_finished_by_the_next(
    chain: Chain, unique: str
) -> None:
    # GIVEN a version whose trainer died after registering it: decided by the gate (the version
    # carries the decision) but not promoted, no event sent, its run still RUNNING
    model = f"undecided-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=11))
    version = chain.wait_versions(model, 1)[0]
    eventually(lambda: chain.events.of(("ModelPromoted", model)), 30, what="ModelPromoted")
    assert version.tags["gate.decision"] == "promote"
    chain.mlflow.delete_registered_model_alias(model, "champion")
    chain.mlflow.delete_model_version_tag(model, version.version, "promotion")
    chain.mlflow.delete_model_version_tag(model, version.version, "event.published")
    chain.mlflow.update_run(version.run_id, status="RUNNING")
    # ... and before it published the serving bundle or moved the serving pointer
    models_bucket = chain.outputs["ModelsBucketName"]
    for key in [
        f"bundles/{model}/{version.version}/bundle.json",
        f"bundles/{model}/{version.version}/model.onnx",
        f"pointers/{model}.json",
    ]:
        chain.s3.delete_object(Bucket=models_bucket, Key=key)

    # WHEN its job comes back (as after the dead trainer's lease ran out) and the reconciler runs
    chain.requeue(model, f"redelivered-{unique}")

    # THEN the next trainer carries out the recorded decision, without training again
    eventually(lambda: chain.champion(model) == version.version, 120, what="champion restored")
    resent = eventually(lambda: chain.events.of(("ModelPromoted", model))[1:], 30, what="a second event")
    assert len(resent) == 1
    assert resent[0]["body"]["detail"]["version"] == version.version
    assert [v.version for v in chain.versions(model)] == [version.version]
    assert "promotion" in chain.mlflow.get_model_version(model, version.version).tags
    assert chain.mlflow.get_run(version.run_id).info.status == "FINISHED"
    # the bundle is rebuilt from what the run logged, and serving is pointed at it
    pointer = json.loads(
        chain.s3.get_object(Bucket=models_bucket, Key=f"pointers/{model}.json")["Body"].read()
    )
    assert pointer["version"] == version.version
    manifest = json.loads(
        chain.s3.get_object(Bucket=models_bucket, Key=pointer["manifest_key"])["Body"].read()
    )
    assert manifest["lineage"]["run_id"] == version.run_id
    assert len(manifest["check"]["records"]) == 20


def test_a_job_that_always_fails_lands_in_the_dead_letter_queue_with_its_reason(
    chain: Chain, unique: str
) -> None:
    model = f"doomed-{unique}"
    # A valid contract whose metric the trainer cannot compute for its task: every retry fails alike.
    contract = (
        datasets.contract_yaml("iris", model)
        .replace(b"metric: f1_macro", b"metric: rmse")
        .replace(b"direction: maximize", b"direction: minimize")
    )
    chain.put_contract(model, contract)
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(100, seed=8))

    assert "does not fit a classification task" in chain.dead_letter_reason(model)
    failed = eventually(lambda: chain.events.of(("TrainingFailed", model)), 30, what="TrainingFailed")[0]
    assert "metric 'rmse'" in failed["body"]["detail"]["failure_reason"]
    assert chain.versions(model) == []


def test_reproduce_rebuilds_the_champion_with_matching_metrics(chain: Chain, unique: str) -> None:
    model = f"repro-{unique}"
    chain.put_contract(model, datasets.contract_yaml("house-prices", model))
    chain.upload(f"{model}/houses.csv", datasets.to_csv(datasets.house_frame(400, seed=9)))
    chain.wait_versions(model, 1)

    result = CliRunner().invoke(app, ["reproduce", "champion", "--model", model, "--stack-name", chain.stack])

    assert result.exit_code == 0, result.output
    assert "every metric matches" in result.output


def test_an_idle_trainer_terminates_its_own_instance(chain: Chain) -> None:
    # Runs last in this module: once nothing is queued, the trainer goes away after its idle time.
    eventually(
        lambda: chain.trainers(("pending", "running", "stopping", "shutting-down", "terminated")),
        30,
        what="a trainer",
    )
    assert eventually(lambda: chain.trainers() == [], 120, interval=1, what="no live trainer")
    # The newest trainer is the one that went idle last. It ended itself: the agent leaves an instance
    # whose process exited running, as EC2 does, and a reconciler that ended it instead would leave no
    # such line in the trainer's own shipped log.
    newest = max(chain.trainers(("terminated",)), key=lambda instance: instance["LaunchTime"])["InstanceId"]
    logs = chain.cloud.client("logs")

    def said_it_terminates() -> bool:
        events = logs.get_log_events(logGroupName=f"/arrival/{chain.stack}/trainer", logStreamName=newest)
        return any(f"terminating instance {newest}" in event["message"] for event in events["events"])

    eventually(said_it_terminates, 30, what=f"{newest}'s own 'terminating instance' line")
