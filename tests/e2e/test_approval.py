"""Manual approval end to end: a model whose contract says `approval: manual` gets versions that wait
after passing the gate; `arrival approve` promotes the newest waiting one, and serving switches to it;
a superseded or never-waiting version is refused."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests import datasets
from tests.conftest import TRAINING_STACK
from tests.e2e.conftest import Chain
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def _served_version(client: httpx.Client, model: str) -> str | None:
    response = client.get(f"/models/{model}")
    return str(response.json()["version"]) if response.status_code == 200 else None


def _waiting(chain: Chain, model: str, count: int) -> list[Any]:
    """The model's versions once `count` of them were judged (waiting, superseded or rejected)."""

    def judged() -> list[Any] | None:
        found = chain.versions(model)
        settled = ("awaiting_approval", "superseded", "rejected", "promotion")
        return found if sum(any(tag in v.tags for tag in settled) for v in found) >= count else None

    return eventually(judged, 240, interval=0.5, what=f"{count} judged version(s) of {model}")


def _arrival(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*arguments, "--stack-name", TRAINING_STACK])
    return result.exit_code, " ".join(result.output.split())  # the console wraps at spaces


def test_a_waiting_version_is_served_once_approved_and_others_are_refused(
    chain: Chain, api: httpx.Client, unique: str
) -> None:
    # GIVEN a model whose contract asks for a person's approval
    model = f"approve-{unique}"
    contract = yaml.safe_load(datasets.contract_yaml("iris", model))
    contract["training"]["approval"] = "manual"
    chain.put_contract(model, yaml.safe_dump(contract).encode())

    # WHEN a first dataset trains a version that passes the gate
    chain.upload(f"{model}/small-noisy.csv", datasets.noisy_iris_csv(60, seed=2, noise=1.5))
    first = _waiting(chain, model, 1)[0]

    # THEN it waits: no champion, nothing served, and ApprovalRequested went out
    assert first.tags["awaiting_approval"].startswith("first model"), first.tags
    requested = eventually(
        lambda: chain.events.of(("ApprovalRequested", model)), 30, what="ApprovalRequested"
    )
    assert requested[0]["body"]["detail"]["version"] == first.version
    assert requested[0]["body"]["detail"]["reason"] == first.tags["awaiting_approval"]
    assert chain.champion(model) is None
    assert _served_version(api, model) is None

    # WHEN a better dataset passes the gate too
    chain.upload(f"{model}/large-clean.csv", datasets.noisy_iris_csv(600, seed=3, noise=0.2))
    second = _waiting(chain, model, 2)[-1]

    # THEN the newer one waits in the older one's place, which can no longer be approved
    assert "awaiting_approval" in second.tags, second.tags
    older = chain.mlflow.get_model_version(model, first.version)
    assert older.tags["superseded"].startswith(f"superseded by version {second.version}")
    assert "awaiting_approval" not in older.tags
    code, printed = _arrival("approve", "--model", model, "--version", first.version)
    assert code == 1, printed
    assert f"superseded by version {second.version}" in printed
    assert chain.champion(model) is None

    # WHEN the operator approves the newest
    code, printed = _arrival("approve", "--model", model, "--version", second.version, "--by", "e2e")

    # THEN it is the champion, serving answers with it, and ModelPromoted says who approved it
    assert code == 0, printed
    assert f"version {second.version} approved by e2e" in printed
    assert chain.champion(model) == second.version
    eventually(lambda: _served_version(api, model) == second.version, 30, what="the approved version served")
    answer = api.post(
        f"/models/{model}/predict",
        json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    )
    assert answer.status_code == 200 and answer.headers["x-model-version"] == second.version
    promoted = eventually(lambda: chain.events.of(("ModelPromoted", model)), 30, what="ModelPromoted")
    assert promoted[0]["body"]["detail"]["version"] == second.version
    assert promoted[0]["body"]["detail"]["reason"] == "approved by e2e"
    pointer = json.loads(
        chain.s3.get_object(Bucket=chain.outputs["ModelsBucketName"], Key=f"pointers/{model}.json")[
            "Body"
        ].read()
    )
    assert pointer["version"] == second.version
    # AND approving it again changes nothing and says so
    code, printed = _arrival("approve", "--model", model, "--version", second.version)
    assert code == 0 and "already approved (approved by e2e)" in printed

    # WHEN a worse dataset is rejected by the gate (labels shuffled)
    shuffled = datasets.noisy_iris_frame(1200, seed=4, noise=0.2)
    shuffled["species"] = shuffled["species"].sample(frac=1, random_state=5).to_numpy()
    chain.upload(f"{model}/shuffled.csv", datasets.to_csv(shuffled))
    third = _waiting(chain, model, 3)[-1]

    # THEN it never waited, so it cannot be approved, and the approved champion stays
    assert "rejected" in third.tags, third.tags
    code, printed = _arrival("approve", "--model", model, "--version", third.version)
    assert code == 1, printed
    assert f"version {third.version} of '{model}' was rejected" in printed
    assert chain.champion(model) == second.version
    assert _served_version(api, model) == second.version
