"""The local cloud's IAM evaluator (localcloud/lambda_executor/.../iam_policy.py) decides as AWS does,
on the statements arrival's template writes and on the cases moto's evaluator gets wrong."""

from __future__ import annotations

from typing import Any

import pytest
from arrival_lambda_executor.iam_policy import Decision, Request, evaluate

INSTANCE = "arn:aws:ec2:us-east-1:000000000000:instance/i-0abc"
# TrainerRole's statement (template.yaml): only this stack's trainers may be terminated.
TERMINATE_OWN_TRAINERS = {
    "Effect": "Allow",
    "Action": "ec2:TerminateInstances",
    "Resource": "arn:aws:ec2:us-east-1:000000000000:instance/*",
    "Condition": {
        "StringEquals": {
            "aws:ResourceTag/arrival:stack": "arrival",
            "aws:ResourceTag/arrival:role": "trainer",
        }
    },
}


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _terminate(**tags: str) -> Request:
    return Request(
        "ec2:TerminateInstances",
        INSTANCE,
        {f"aws:ResourceTag/arrival:{key}": [value] for key, value in tags.items()},
    )


@pytest.mark.parametrize(
    ("tags", "decision"),
    [
        ({"stack": "arrival", "role": "trainer"}, Decision.ALLOWED),
        # moto's evaluator allows both of these: a missing key passes there.
        ({"stack": "arrival"}, Decision.IMPLICIT_DENY),
        ({}, Decision.IMPLICIT_DENY),
        ({"stack": "another", "role": "trainer"}, Decision.IMPLICIT_DENY),
        ({"stack": "arrival", "role": "server"}, Decision.IMPLICIT_DENY),
    ],
)
def test_a_trainer_terminates_only_its_own_stacks_trainers(tags: dict[str, str], decision: Decision) -> None:
    assert evaluate([_policy(TERMINATE_OWN_TRAINERS)], _terminate(**tags)) is decision


def test_a_condition_that_fails_on_an_allow_leaves_other_allows_standing() -> None:
    # moto's evaluator takes the failed condition for an explicit deny, and refuses.
    everything_on_ec2 = {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}
    request = _terminate(stack="another", role="trainer")
    assert evaluate([_policy(TERMINATE_OWN_TRAINERS, everything_on_ec2)], request) is Decision.ALLOWED


def test_an_explicit_deny_wins_over_any_allow() -> None:
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::data/*"}
    request = Request("s3:DeleteObject", "arn:aws:s3:::data/file.csv")
    assert evaluate([_policy(allow), _policy(deny)], request) is Decision.EXPLICIT_DENY
    assert (
        evaluate([_policy(allow), _policy(deny)], Request("s3:GetObject", request.resource))
        is Decision.ALLOWED
    )


def test_a_versioned_get_needs_its_own_action() -> None:
    # What the trainer's role lacked (issue 17): s3:GetObject does not cover a GET by version.
    get_only = _policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::processed/*"})
    key = "arn:aws:s3:::processed/iris/data/0a1b.parquet"
    assert evaluate([get_only], Request("s3:GetObject", key)) is Decision.ALLOWED
    assert evaluate([get_only], Request("s3:GetObjectVersion", key)) is Decision.IMPLICIT_DENY


def test_actions_match_in_any_case_and_resources_only_in_theirs() -> None:
    policy = _policy({"Effect": "Allow", "Action": "S3:getobject", "Resource": "arn:aws:s3:::Data/*"})
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::Data/x")) is Decision.ALLOWED
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::data/x")) is Decision.IMPLICIT_DENY


def test_wildcards_are_iams_and_a_dot_is_a_dot() -> None:
    policy = _policy({"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::bucket/a.?sv"})
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::bucket/a.csv")) is Decision.ALLOWED
    # moto's evaluator turns the policy into a regular expression unescaped: `.` matched any character.
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::bucket/abcsv")) is Decision.IMPLICIT_DENY
    assert evaluate([policy], Request("s3:PutObject", "arn:aws:s3:::bucket/a.csv")) is Decision.IMPLICIT_DENY


def test_not_action_and_not_resource_invert_the_match() -> None:
    # moto's evaluator ignores NotResource: this Deny would not apply there.
    allow = {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
    deny_elsewhere = {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::mine/*"}
    policy = _policy(allow, deny_elsewhere)
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::mine/x")) is Decision.ALLOWED
    assert evaluate([policy], Request("s3:GetObject", "arn:aws:s3:::theirs/x")) is Decision.EXPLICIT_DENY
    assert evaluate([policy], Request("iam:PassRole", "arn:aws:iam::0:role/r")) is Decision.IMPLICIT_DENY


@pytest.mark.parametrize(
    ("condition", "context", "holds"),
    [
        ({"StringLike": {"s3:prefix": "iris/*"}}, {"s3:prefix": ["iris/data"]}, True),
        ({"StringLike": {"s3:prefix": "iris/*"}}, {}, False),
        ({"StringLikeIfExists": {"s3:prefix": "iris/*"}}, {}, True),
        ({"StringNotEquals": {"aws:ResourceTag/team": "ml"}}, {}, True),
        ({"StringNotEquals": {"aws:ResourceTag/team": "ml"}}, {"aws:resourcetag/TEAM": ["ml"]}, False),
        ({"StringEqualsIgnoreCase": {"aws:ResourceTag/team": "ML"}}, {"aws:ResourceTag/team": ["ml"]}, True),
        (
            {"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:*:topic"}},
            {"aws:SourceArn": ["arn:aws:sns:eu:1:topic"]},
            True,
        ),
        ({"Bool": {"aws:SecureTransport": "false"}}, {"aws:SecureTransport": ["true"]}, False),
        ({"Null": {"aws:ResourceTag/team": "true"}}, {}, True),
        ({"Null": {"aws:ResourceTag/team": "false"}}, {}, False),
    ],
)
def test_condition_operators(condition: dict[str, Any], context: dict[str, list[str]], holds: bool) -> None:
    statement = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*", "Condition": condition}
    decision = evaluate([_policy(statement)], Request("s3:ListBucket", "arn:aws:s3:::b", context))
    assert (decision is Decision.ALLOWED) is holds


def test_an_operator_it_does_not_know_fails_closed() -> None:
    unknown = {"NumericLessThan": {"s3:max-keys": "10"}}
    allow = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*", "Condition": unknown}
    deny = {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "*", "Condition": unknown}
    request = Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:max-keys": ["5"]})
    assert evaluate([_policy(allow)], request) is Decision.IMPLICIT_DENY
    everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    assert evaluate([_policy(everything, deny)], request) is Decision.EXPLICIT_DENY
