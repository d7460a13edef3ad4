"""The instances run the stack's release, and come back by themselves.

On AWS each instance's user data installs the release the stack names (deploy/arrival-boot.sh) and
runs its process under systemd; the local instance agent does the same steps
(localcloud/instance_release.py) and supervises the process as the unit does.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.processes import cloud_processes
from tests import datasets
from tests.conftest import PROJECT_ROOT, SECOND_TRAINING_STACK, TRAINING_STACK, TRAINING_STACK_PARAMETERS
from tests.e2e.conftest import Chain, arrival
from tests.helpers import eventually
from tests.releases import build_changed_release, publish_to_deploy_bucket

CHECKOUT = Path(__file__).resolve().parents[2]


def _instance_processes(chain: Chain, executable: str) -> list[int]:
    """The processes of the chain's stack's instances whose command line runs ``executable`` (other
    stacks' servers run beside them: each server instance answers on a port of its own)."""
    return cloud_processes(chain.cloud.settings.cloud_id, executable, (f"ARRIVAL_STACK_NAME={chain.stack}",))


def _outside_the_checkout(pid: int) -> list[str]:
    """Every way the process could be running the checkout's code or packages, if any: its
    interpreter, its command line, its working directory, its environment, and the files it has
    mapped (the native extensions of numpy, scikit-learn, onnxruntime...)."""
    proc = Path("/proc") / str(pid)
    checkout = str(CHECKOUT)
    found = []
    executable = str((proc / "exe").readlink())
    if executable.startswith(checkout) or "/.venv/" in executable:
        found.append(f"interpreter {executable}")
    found += [
        f"argument {argument}"
        for argument in (proc / "cmdline").read_text().split("\0")
        if checkout in argument
    ]
    working_directory = str((proc / "cwd").readlink())
    if working_directory.startswith(checkout):
        found.append(f"working directory {working_directory}")
    for variable in (proc / "environ").read_text().split("\0"):
        name, _, value = variable.partition("=")
        if name in ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and checkout in value:
            found.append(f"{name}={value}")
    mapped = {line.split()[-1] for line in (proc / "maps").read_text().splitlines() if "/" in line}
    found += [f"mapped {path}" for path in sorted(mapped) if path.startswith(checkout)]
    return found


def test_the_trainer_and_the_server_run_the_release_and_nothing_of_the_checkout(
    chain: Chain, api: httpx.Client, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model in training, and the serving instance answering
    model = f"released-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(300, seed=31))
    chain.wait_running_run(model)
    assert api.get("/health").status_code == 200

    # WHEN we look at both processes
    trainers = _instance_processes(chain, "arrival-worker")
    servers = _instance_processes(chain, "arrival-serve")

    # THEN each runs from its installed release, and nothing of it comes from the checkout
    assert trainers and servers
    for pid in [*trainers, *servers]:
        assert _outside_the_checkout(pid) == []
        environment = dict(
            variable.partition("=")[::2]
            for variable in (Path(f"/proc/{pid}/environ").read_text().split("\0"))
        )
        assert "/releases/" in environment["PYTHONPATH"]
        assert environment["ARRIVAL_RELEASE_VERSION"] in environment["PYTHONPATH"]
    # and `arrival status` says which release each instance runs: the stack's
    report = json.loads(
        arrival(chain.cloud, monkeypatch, "status", "--stack-name", TRAINING_STACK, "--json").output
    )
    release = report["stack"]["release"]
    assert release and environment["ARRIVAL_RELEASE_VERSION"] == release
    assert report["stack"]["server"]["release"] == release
    assert {trainer["release"] for trainer in report["stack"]["trainers"]} == {release}
    # and the server's environment holds no scikit-learn, pandas or MLflow at all
    server_site = _site_packages(servers[0])
    assert not {"sklearn", "pandas", "mlflow"} & {path.name for path in server_site.iterdir()}
    chain.wait_versions(model, 1)


def _site_packages(pid: int) -> Path:
    """The site-packages of the virtualenv the process's interpreter belongs to: the release's
    script (its first argument) names that interpreter on its first line."""
    script = Path(Path(f"/proc/{pid}/cmdline").read_text().split("\0")[1])
    interpreter = Path(script.read_text().splitlines()[0].removeprefix("#!"))
    return next(interpreter.parent.parent.glob("lib/python3.*/site-packages"))


def _serving_answers(api: httpx.Client) -> bool:
    try:
        return api.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def test_a_killed_server_comes_back_answering(chain: Chain, api: httpx.Client) -> None:
    # GIVEN the serving instance's process
    killed = _instance_processes(chain, "arrival-serve")
    assert killed

    # WHEN it is killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)

    # THEN its supervisor starts it again, and it answers
    eventually(
        lambda: set(_instance_processes(chain, "arrival-serve")) - set(killed), 30, what="a new server"
    )
    eventually(lambda: _serving_answers(api), 60, what="the server answering again")


def test_a_stopped_and_started_serving_instance_comes_back_answering(chain: Chain, api: httpx.Client) -> None:
    # GIVEN the serving instance, answering
    instance_id = chain.outputs["ServingInstanceId"]
    ec2 = chain.cloud.client("ec2")
    assert _serving_answers(api)

    # WHEN it is stopped (its process ends), then started again
    ec2.stop_instances(InstanceIds=[instance_id])
    eventually(lambda: not _instance_processes(chain, "arrival-serve"), 30, what="the server stopped")
    ec2.start_instances(InstanceIds=[instance_id])

    # THEN its process comes back from the release it installed at its first boot, and answers
    eventually(lambda: _serving_answers(api), 60, what="the server answering after the start")


def _stack_release(chain: Chain) -> str:
    stack = chain.cloud.client("cloudformation").describe_stacks(StackName=chain.stack)["Stacks"][0]
    return str(
        next(p["ParameterValue"] for p in stack["Parameters"] if p["ParameterKey"] == "ReleaseVersion")
    )


def _trained_by(chain: Chain, version: Any) -> str:
    """The release of the trainer that trained a version (its run's `release` tag)."""
    return str(chain.mlflow.get_run(version.run_id).data.tags["release"])


def test_a_new_release_replaces_the_trainers_once_their_jobs_are_done(
    second_chain: Chain, unique: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # (The second training stack: its lane runs one test at a time, so no other test's trainer is
    # training when its release changes, and the later ones run on the new release.)
    chain = second_chain
    model = f"rolled-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    # GIVEN a version trained by a trainer of the release the stack runs
    chain.upload(f"{model}/first.csv", datasets.noisy_iris_csv(300, seed=41))
    first = chain.wait_versions(model, 1)[0]
    deployed = _stack_release(chain)
    assert _trained_by(chain, first) == deployed
    # ...and a second release of the same code, under another version
    second = build_changed_release(tmp_path_factory.mktemp("release"), "the trainers' second release")
    publish_to_deploy_bucket(chain.cloud.session, second)

    # WHEN the stack is deployed with it, and new data arrives
    parameters = {**TRAINING_STACK_PARAMETERS, "ReleaseVersion": second.version}
    chain.cloud.deploy(PROJECT_ROOT / "template.yaml", SECOND_TRAINING_STACK, parameters)
    chain.upload(f"{model}/second.csv", datasets.noisy_iris_csv(300, seed=42))

    # THEN a trainer of the new release trains it: the old one, idle, ended before taking the job
    latest = chain.wait_versions(model, 2)[-1]
    assert _trained_by(chain, latest) == second.version
    eventually(
        lambda: {_user_data_release(chain, trainer) for trainer in chain.trainers()} <= {second.version},
        60,
        what="no trainer of the first release left",
    )


def _user_data_release(chain: Chain, trainer: dict[str, Any]) -> str:
    """The release a trainer's user data installs (its ARRIVAL_RELEASE_URI's last part)."""
    attribute = chain.ec2.describe_instance_attribute(InstanceId=trainer["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
    uri = next(line for line in user_data.splitlines() if "ARRIVAL_RELEASE_URI=" in line)
    return uri.rsplit("/", 1)[-1].strip()
