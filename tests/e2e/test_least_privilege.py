"""The local cloud enforces each role's IAM policy, so a role missing one action it needs fails here
as it would on AWS: the trainer without s3:GetObjectVersion (the hole the first enforced run was
built to find) cannot read a dataset by version, and the chain says so, naming the action."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests import datasets
from tests.conftest import TRAINING_STACK, LocalCloud
from tests.e2e.conftest import Chain, arrival

pytestmark = pytest.mark.e2e

STRIPPED = "s3:GetObjectVersion"


@pytest.fixture
def trainer_without_versioned_reads(chain: Chain) -> Iterator[str]:
    """The stack's TrainerRole with s3:GetObjectVersion taken out of its policy, for this test only
    (the training lane runs one test at a time), put back however the test ends."""
    iam = chain.cloud.client("iam")
    role = chain.cloud.client("cloudformation").describe_stack_resource(
        StackName=TRAINING_STACK, LogicalResourceId="TrainerRole"
    )["StackResourceDetail"]["PhysicalResourceId"]
    # The role's own policy, not its release grant (TrainerReleasePolicy): the one naming the action.
    documents = {
        name: iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    }
    [name] = [name for name, document in documents.items() if STRIPPED in json.dumps(document)]
    original = documents[name]
    stripped = json.loads(json.dumps(original))
    for statement in stripped["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [action for action in actions if action != STRIPPED] or ["s3:GetObject"]
    assert stripped != original, f"TrainerRole grants no {STRIPPED}: nothing to strip"
    iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(stripped))
    try:
        yield role
    finally:
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(original))


def test_a_trainer_role_missing_one_action_dead_letters_its_job_naming_it(
    chain: Chain,
    local_cloud: LocalCloud,
    trainer_without_versioned_reads: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a trainer role that may read processed data, but not by version
    model = f"denied-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))

    # WHEN a dataset arrives and its job is trained
    chain.upload(f"{model}/data.csv", datasets.noisy_iris_csv(100, seed=4))

    # THEN the job is dead-lettered with AWS's refusal as its reason, naming the action and the role
    reason = chain.dead_letter_reason(model)
    assert "prepare" in reason and "AccessDenied" in reason and STRIPPED in reason, reason
    assert chain.versions(model) == []

    # AND `arrival status` says why on the model's problem line
    status = arrival(local_cloud, monkeypatch, "status", "--stack-name", TRAINING_STACK, "--json")
    assert status.exit_code == 0, status.output
    [entry] = [entry for entry in json.loads(status.output)["stack"]["models"] if entry["name"] == model]
    problem = next(problem for problem in entry["problems"] if "dead-lettered" in problem)
    assert "AccessDenied" in problem and STRIPPED in problem, problem
