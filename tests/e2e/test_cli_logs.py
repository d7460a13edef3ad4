"""`arrival logs` reads what the deployed stack logged: the functions' lines from CloudWatch Logs as
LocalStack keeps them, the trainer's and the server's output as the instance agent ships it there
(the CloudWatch agent's job on AWS), once or following."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests import datasets
from tests.conftest import INGEST_STACK, PROJECT_ROOT, TRAINING_STACK, LocalCloud
from tests.e2e.conftest import Chain, Pipeline, arrival, cloud_settings
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_ingest_logs_name_the_file_and_follow_new_lines(
    local_cloud: LocalCloud, pipeline: Pipeline, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN `arrival logs ingest --follow` running, as an operator leaves it in a terminal
    model = f"logs-{unique}"
    pipeline.put_contract(model, datasets.contract_yaml("iris", model))
    environment = {**os.environ, **cloud_settings(local_cloud)}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "logs",
            "ingest",
            "--follow",
            *["--since", "1m"],
            "--stack-name",
            INGEST_STACK,
        ],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(follower.stdout or []), daemon=True)
    reader.start()
    try:
        # WHEN a file is uploaded and accepted
        pipeline.upload(f"{model}/followed.csv", datasets.to_csv(datasets.iris_frame(60, seed=4)))
        pipeline.wait_accepted(model, 1)

        # THEN the follower prints the ingest function's line about it, marked as ingest's
        line = eventually(
            lambda: next((line for line in list(followed) if f"{model}/followed.csv" in line), None),
            60,
            what="the ingest line in the follower's output",
        )
        assert " ingest " in line
    finally:
        follower.terminate()
        follower.wait(timeout=30)

    # AND read once, the same lines are there, in time order
    once = arrival(
        local_cloud, monkeypatch, "logs", "ingest", *["--since", "10m"], "--stack-name", INGEST_STACK
    )
    assert once.exit_code == 0, once.output
    assert f"{model}/followed.csv" in once.output
    stamps = [line.split(" ", 1)[0] for line in once.output.splitlines() if line[:2].isdigit()]
    assert stamps == sorted(stamps)


def test_trainer_and_serving_logs_come_from_their_instances(
    local_cloud: LocalCloud, chain: Chain, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model trained by a real trainer instance and served by the stack's server
    model = f"logs-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    chain.upload(f"{model}/iris.csv", datasets.to_csv(datasets.iris_frame(150, seed=5)))
    chain.wait_versions(model, 1)

    # WHEN the operator reads the trainer's and the server's logs
    def logged(source: str, phrase: str) -> str | None:
        result = arrival(
            local_cloud, monkeypatch, "logs", source, "--since", "30m", "--stack-name", TRAINING_STACK
        )
        assert result.exit_code == 0, result.output
        return result.output if phrase in result.output else None

    # THEN the trainer's own output names the model it trained, from a stream per instance
    trained = eventually(lambda: logged("trainer", f"trained {model}"), 60, what="the trainer's line")
    line = next(line for line in trained.splitlines() if f"trained {model}" in line)
    assert line.split()[1] == "trainer" and line.split()[2].startswith("i-")
    # AND the server's own line about this model is there too, from the server's stream
    served = eventually(
        lambda: logged("serving", f"model loaded: model={model}"), 60, what="the server's line"
    )
    line = next(line for line in served.splitlines() if f"model loaded: model={model}" in line)
    assert line.split()[1] == "serving" and line.split()[2].startswith("i-")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["logs", "nginx"], "unknown source 'nginx'; choose one of: ingest, reconcile, serving, trainer"),
        (["logs", "ingest", "--since", "yesterday"], "--since 'yesterday' is not a duration"),
        (["logs", "ingest", "--stack-name", "absent"], "no stack named absent: run `arrival deploy`"),
    ],
)
def test_a_wrong_source_duration_or_stack_is_one_line(
    local_cloud: LocalCloud,
    pipeline: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    phrase: str,
) -> None:
    stack = [] if "--stack-name" in args else ["--stack-name", INGEST_STACK]
    result = arrival(local_cloud, monkeypatch, *args, *stack)
    assert result.exit_code == 1, result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert phrase in result.output
