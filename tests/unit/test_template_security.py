"""Least privilege and bucket hygiene, read off template.yaml: each role may do what its code does
and no more, and every bucket is private, encrypted, TLS-only and cleans up after itself.

Policies are checked with a small evaluator: intrinsic functions are rendered as `${Name}` /
`${Name.Attr}` placeholders, and actions and resources match as IAM matches them (`*` and `?`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.layout import (
    SWEEP_STATE_KEY,
    accepted_list_key,
    contract_key,
    outcome_key,
    recipe_key,
    trainer_heartbeat_key,
)
from common.reconcile import LEASE_KEY
from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
ARN = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}"
TRAINER_LAUNCH_TEMPLATE = f"{ARN}:launch-template/${{TrainerLaunchTemplate}}"
# EC2 actions that take no resource-level permissions (IAM's service reference): only these may
# name the resource "*".
WITHOUT_RESOURCE_LEVEL = {
    "ec2:DescribeInstances",
    # Session Manager's channels (the instances' SessionManagerPolicy).
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}
# SAM policy templates the functions use; none grants EC2, IAM or Lambda actions.
SAM_TEMPLATES_WITHOUT_COMPUTE = {
    "S3ReadPolicy",
    "S3CrudPolicy",
    "SQSSendMessagePolicy",
    "EventBridgePutEventsPolicy",
}


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"${{{value['Ref']}}}"
    if "Fn::GetAtt" in value:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        return str(value["Fn::Sub"])
    raise AssertionError(f"cannot render {value}")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _granted_if_set(statements: list[Any]) -> Iterator[dict[str, Any]]:
    """The statements, with a conditional one (`Fn::If`) as its branches that grant: what the role
    holds when the condition is true, for a check that must hold either way."""
    for statement in statements:
        if isinstance(statement, dict) and "Fn::If" in statement:
            _, *branches = statement["Fn::If"]
            yield from _granted_if_set([branch for branch in branches if branch != {"Ref": "AWS::NoValue"}])
        else:
            yield statement


def _statements(policy_holder: Any) -> Iterator[dict[str, Any]]:
    """Every policy statement anywhere below a template node."""
    if isinstance(policy_holder, dict):
        if "Statement" in policy_holder:
            yield from _granted_if_set(_listed(policy_holder["Statement"]))
        for value in policy_holder.values():
            yield from _statements(value)
    elif isinstance(policy_holder, list):
        for value in policy_holder:
            yield from _statements(value)


def _identity_statements(logical_id: str) -> list[dict[str, Any]]:
    """What a role, or a SAM function's role, is allowed: inline statements and the template's
    managed policies it references."""
    properties = RESOURCES[logical_id]["Properties"]
    found = list(_statements(properties.get("Policies", [])))
    for policy in _listed(properties.get("Policies", [])) + properties.get("ManagedPolicyArns", []):
        if isinstance(policy, dict) and "Ref" in policy and policy["Ref"] in RESOURCES:
            found += _statements(RESOURCES[policy["Ref"]]["Properties"]["PolicyDocument"])
    return [statement for statement in found if statement["Effect"] == "Allow"]


def _allows(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    return any(
        any(fnmatch.fnmatchcase(action, pattern) for pattern in _listed(statement["Action"]))
        and any(fnmatch.fnmatchcase(resource, _render(pattern)) for pattern in _listed(statement["Resource"]))
        for statement in statements
    )


def _granting(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(fnmatch.fnmatchcase(action, p) for p in _listed(s["Action"]))]


def _of_type(resource_type: str) -> list[str]:
    return [name for name, resource in RESOURCES.items() if resource["Type"] == resource_type]


ROLES = [*_of_type("AWS::IAM::Role"), *_of_type("AWS::Serverless::Function")]
BUCKETS = _of_type("AWS::S3::Bucket")


def test_no_statement_allows_everything_or_everywhere_but_what_must() -> None:
    # A key policy is the key's own: its "*" is the key, and its account statement is AWS's default,
    # which hands the decision to IAM (test_the_notification_key_...).
    not_keys = {name: resource for name, resource in RESOURCES.items() if resource["Type"] != "AWS::KMS::Key"}
    for statement in _statements(not_keys):
        if statement["Effect"] != "Allow":
            continue
        actions = _listed(statement["Action"])
        assert "NotAction" not in statement and "NotResource" not in statement
        assert not [action for action in actions if action == "*" or action.endswith(":*")], statement
        if "*" in _listed(statement.get("Resource", [])):
            assert set(actions) <= WITHOUT_RESOURCE_LEVEL, statement


def test_no_role_takes_an_aws_managed_policy_every_grant_is_in_the_template() -> None:
    for role in _of_type("AWS::IAM::Role"):
        for arn in RESOURCES[role]["Properties"].get("ManagedPolicyArns", []):
            assert isinstance(arn, dict) and RESOURCES[arn["Ref"]]["Type"] == "AWS::IAM::ManagedPolicy", arn


@pytest.mark.parametrize("role", ["TrainerRole", "ServingRole"])
def test_the_instances_open_session_manager_shells_and_read_no_parameter(role: str) -> None:
    statements = _identity_statements(role)
    assert _allows(statements, "ssm:UpdateInstanceInformation", f"{ARN}:instance/i-0abc")
    assert _allows(statements, "ssmmessages:OpenDataChannel", "*")
    secret = "arn:aws:ssm:us-east-1:123456789012:parameter/database/password"
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"):
        assert not _allows(statements, action, secret)


@pytest.mark.parametrize("role", ROLES)
def test_instances_start_only_from_the_trainer_launch_template(role: str) -> None:
    for statement in _granting(_identity_statements(role), "ec2:RunInstances"):
        resources = [_render(resource) for resource in _listed(statement["Resource"])]
        assert TRAINER_LAUNCH_TEMPLATE in resources
        assert f"{ARN}:instance/*" in resources
        assert "*" not in resources
        # Into the trainers' subnet and group only, not any of the account's.
        assert [r for r in resources if ":subnet/" in r] == [f"{ARN}:subnet/${{TrainerSubnetId}}"]
        assert [r for r in resources if ":security-group/" in r] == [
            f"{ARN}:security-group/${{TrainerSecurityGroup.GroupId}}"
        ]
        (operator, keys), *others = statement["Condition"].items()
        assert operator in {"ArnEquals", "ArnLike"} and not others
        assert _render(keys["ec2:LaunchTemplate"]) == TRAINER_LAUNCH_TEMPLATE


@pytest.mark.parametrize("role", ROLES)
def test_tags_are_set_only_at_launch(role: str) -> None:
    for statement in _granting(_identity_statements(role), "ec2:CreateTags"):
        assert statement["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}


@pytest.mark.parametrize("role", ROLES)
def test_only_the_stacks_trainers_can_be_terminated(role: str) -> None:
    for statement in _granting(_identity_statements(role), "ec2:TerminateInstances"):
        assert [_render(resource) for resource in _listed(statement["Resource"])] == [f"{ARN}:instance/*"]
        assert statement["Condition"] == {
            "StringEquals": {
                "aws:ResourceTag/arrival:stack": {"Ref": "AWS::StackName"},
                "aws:ResourceTag/arrival:role": "trainer",
            }
        }


def test_only_the_reconcile_function_starts_instances_and_passes_the_trainer_role() -> None:
    starters = [role for role in ROLES if _granting(_identity_statements(role), "ec2:RunInstances")]
    passers = [role for role in ROLES if _granting(_identity_statements(role), "iam:PassRole")]
    assert starters == passers == ["ReconcileFunction"]
    (pass_role,) = _granting(_identity_statements("ReconcileFunction"), "iam:PassRole")
    assert pass_role["Resource"] == {"Fn::GetAtt": ["TrainerRole", "Arn"]}


def test_the_ingest_function_cannot_start_instances_only_ask_the_reconciler() -> None:
    policies = RESOURCES["IngestFunction"]["Properties"]["Policies"]
    sam_templates = {name for policy in policies if isinstance(policy, dict) for name in policy}
    assert sam_templates - {"Statement", "Ref"} <= SAM_TEMPLATES_WITHOUT_COMPUTE
    statements = _identity_statements("IngestFunction")
    assert not [s for s in statements for a in _listed(s["Action"]) if a.startswith(("ec2:", "iam:"))]
    (invoke,) = _granting(statements, "lambda:InvokeFunction")
    assert invoke["Resource"] == {"Fn::GetAtt": ["ReconcileFunction", "Arn"]}
    environment = RESOURCES["IngestFunction"]["Properties"]["Environment"]["Variables"]
    assert environment["RECONCILE_FUNCTION_NAME"] == {"Ref": "ReconcileFunction"}


PROCESSED = "${ProcessedBucket.Arn}"
RECONCILER_NEEDS = [
    ("sqs:GetQueueAttributes", "${TrainingQueue.Arn}"),
    ("ec2:DescribeInstances", "*"),
    ("ec2:RunInstances", f"{ARN}:instance/i-0abc"),
    ("ec2:RunInstances", TRAINER_LAUNCH_TEMPLATE),
    ("ec2:CreateTags", f"{ARN}:instance/i-0abc"),
    ("ec2:TerminateInstances", f"{ARN}:instance/i-0abc"),
    ("iam:PassRole", "${TrainerRole.Arn}"),
    ("s3:GetObject", f"{PROCESSED}/{LEASE_KEY}"),
    ("s3:PutObject", f"{PROCESSED}/{LEASE_KEY}"),
    ("s3:GetObject", f"{PROCESSED}/{trainer_heartbeat_key('i-0abc')}"),
    ("s3:ListBucket", PROCESSED),
]


@pytest.mark.parametrize(("action", "resource"), RECONCILER_NEEDS)
def test_the_reconciler_may_do_what_it_does(action: str, resource: str) -> None:
    assert _allows(_identity_statements("ReconcileFunction"), action, resource)


TRAINER_NEEDS = [
    ("cloudformation:DescribeStacks", "${AWS::StackId}"),
    ("sqs:ReceiveMessage", "${TrainingQueue.Arn}"),
    ("sqs:DeleteMessage", "${TrainingQueue.Arn}"),
    ("sqs:ChangeMessageVisibility", "${TrainingQueue.Arn}"),
    ("sqs:SendMessage", "${TrainingDeadLetterQueue.Arn}"),
    ("sqs:GetQueueAttributes", "${IngestQueue.Arn}"),
    ("events:PutEvents", "${EventBus.Arn}"),
    ("s3:GetObject", f"{PROCESSED}/{accepted_list_key('iris')}"),
    ("s3:GetObject", f"{PROCESSED}/iris/data/0a1b.parquet"),
    # It downloads processed data by the version it headed (a versioned GET).
    ("s3:GetObjectVersion", f"{PROCESSED}/iris/data/0a1b.parquet"),
    ("s3:PutObject", f"{PROCESSED}/_arrival/dvc/iris/files/md5/0a/1b"),
    ("s3:PutObject", f"{PROCESSED}/{trainer_heartbeat_key('i-0abc')}"),
    ("s3:DeleteObject", f"{PROCESSED}/{trainer_heartbeat_key('i-0abc')}"),
    ("s3:ListBucket", PROCESSED),
    ("s3:GetObject", f"${{ConfigBucket.Arn}}/{contract_key('iris')}"),
    ("s3:PutObject", "${ModelsBucket.Arn}/bundles/iris/3/model.onnx"),
    ("s3:PutObject", "${ModelsBucket.Arn}/pointers/iris.json"),
    ("s3:PutObject", "${ModelsBucket.Arn}/iris/drift/training/0a1b/report.html"),
    ("ec2:TerminateInstances", f"{ARN}:instance/i-0abc"),
]


@pytest.mark.parametrize(("action", "resource"), TRAINER_NEEDS)
def test_the_trainer_may_do_what_the_worker_does(action: str, resource: str) -> None:
    assert _allows(_identity_statements("TrainerRole"), action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("s3:PutObject", f"${{ConfigBucket.Arn}}/{contract_key('iris')}"),
        ("s3:DeleteObject", f"${{ConfigBucket.Arn}}/{contract_key('iris')}"),
        ("s3:PutObject", f"{PROCESSED}/{accepted_list_key('iris')}"),
        ("s3:PutObject", f"{PROCESSED}/{LEASE_KEY}"),
        ("ec2:RunInstances", f"{ARN}:instance/i-0abc"),
    ],
)
def test_the_trainer_cannot_change_contracts_accepted_data_or_start_instances(
    action: str, resource: str
) -> None:
    assert not _allows(_identity_statements("TrainerRole"), action, resource)


def _sam_bucket_grants(logical_id: str) -> list[str]:
    """The buckets a SAM function's S3 policy templates grant (on every key)."""
    policies = _listed(RESOURCES[logical_id]["Properties"].get("Policies", []))
    return [
        _render(policy[name]["BucketName"])
        for policy in policies
        if isinstance(policy, dict)
        for name in ("S3ReadPolicy", "S3CrudPolicy")
        if name in policy
    ]


@pytest.mark.parametrize("role", ROLES)
def test_only_the_trainer_reads_recipes_and_no_role_writes_them(role: str) -> None:
    """A recipe is code the trainer runs: whoever could write one could run code as the trainer."""
    recipe = f"${{ConfigBucket.Arn}}/{recipe_key('iris')}"
    statements = _identity_statements(role)
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not _allows(statements, action, recipe)
    assert _allows(statements, "s3:GetObject", recipe) == (role == "TrainerRole")
    assert "${ConfigBucket}" not in _sam_bucket_grants(role)


def test_the_notifier_may_publish_to_its_topic_and_keep_what_fails_and_nothing_else() -> None:
    statements = _identity_statements("NotifyFunction")

    assert _allows(statements, "sns:Publish", "${NotificationTopic}")
    assert _allows(statements, "sqs:SendMessage", "${NotificationDeadLetterQueue.Arn}")
    # SNS asks KMS for the topic's data key as the publisher (the topic is encrypted).
    assert _allows(statements, "kms:GenerateDataKey", "${NotificationKey.Arn}")
    assert _allows(statements, "kms:Decrypt", "${NotificationKey.Arn}")
    granted = {action for statement in statements for action in _listed(statement["Action"])}
    assert granted == {"sns:Publish", "sqs:SendMessage", "kms:Decrypt", "kms:GenerateDataKey*"}
    assert [s["Resource"] for s in _granting(statements, "kms:Decrypt")] == [
        {"Fn::GetAtt": ["NotificationKey", "Arn"]}
    ]
    assert not RESOURCES["NotifyFunction"]["Properties"].get("ManagedPolicyArns")


def test_only_the_notifier_publishes_to_sns_and_only_to_the_notification_topic() -> None:
    publishers = [role for role in ROLES if _granting(_identity_statements(role), "sns:Publish")]
    assert publishers == ["NotifyFunction"]
    (publish,) = _granting(_identity_statements("NotifyFunction"), "sns:Publish")
    assert publish["Resource"] == {"Ref": "NotificationTopic"}


def test_every_topic_is_encrypted_at_rest_with_the_stacks_rotated_key() -> None:
    topics = _of_type("AWS::SNS::Topic")
    assert topics == ["NotificationTopic", "ServingReloadTopic"]
    for topic in topics:
        # Not AWS's managed key (alias/aws/sns): CloudWatch cannot publish an alarm to a topic under it.
        assert RESOURCES[topic]["Properties"].get("KmsMasterKeyId") == {"Ref": "NotificationKey"}, topic
    assert RESOURCES["NotificationKey"]["Properties"]["EnableKeyRotation"] is True


STACK_ALARMS = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${AWS::StackName}-*"
FROM_STACK_ALARMS = {
    "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
    "ArnLike": {"aws:SourceArn": {"Fn::Sub": STACK_ALARMS}},
}


def test_the_notification_key_leaves_use_to_iam_and_lets_cloudwatch_encrypt_the_stacks_alarms() -> None:
    account, cloudwatch, events = _statements(RESOURCES["NotificationKey"]["Properties"]["KeyPolicy"])
    assert account["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    assert cloudwatch["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert sorted(cloudwatch["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert cloudwatch["Condition"] == FROM_STACK_ALARMS
    # EventBridge encrypts what the stack's own bus's rules publish to the reload topic, and nothing else
    assert events["Principal"] == {"Service": "events.amazonaws.com"}
    assert sorted(events["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    bus_rules = (
        "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/${AWS::StackName}-events/*"
    )
    assert events["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        "ArnLike": {"aws:SourceArn": {"Fn::Sub": bus_rules}},
    }


def test_only_the_reload_rule_publishes_to_the_reload_topic() -> None:
    (statement,) = _statements(RESOURCES["ServingReloadTopicPolicy"]["Properties"]["PolicyDocument"])
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sns:Publish"
    assert statement["Resource"] == {"Ref": "ServingReloadTopic"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ServingReloadRule", "Arn"]}}
    }


RELOAD_QUEUE = (
    "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}-serving-reload-i-0abc"
)


@pytest.mark.parametrize(
    "action",
    [
        "sqs:CreateQueue",
        "sqs:SetQueueAttributes",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:DeleteQueue",
    ],
)
def test_a_server_may_keep_a_reload_queue_of_its_own_and_no_other(action: str) -> None:
    statements = _identity_statements("ServingRole")
    assert _allows(statements, action, RELOAD_QUEUE)
    for other in (
        "${TrainingQueue.Arn}",
        "${IngestQueue.Arn}",
        "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:other-serving-reload-i-0abc",
    ):
        assert not _allows(statements, action, other), other


def test_a_server_subscribes_to_the_reload_topic_only() -> None:
    statements = _identity_statements("ServingRole")
    for action in ("sns:Subscribe", "sns:Unsubscribe"):
        assert _allows(statements, action, "${ServingReloadTopic}")
        assert not _allows(statements, action, "${NotificationTopic}")


def test_the_topic_lets_cloudwatch_publish_the_stacks_alarms_and_no_other_service() -> None:
    (statement,) = _statements(RESOURCES["NotificationTopicPolicy"]["Properties"]["PolicyDocument"])
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert statement["Action"] == "sns:Publish"
    assert statement["Resource"] == {"Ref": "NotificationTopic"}
    assert statement["Condition"] == FROM_STACK_ALARMS


def test_every_alarm_is_named_for_the_stack_so_its_policies_let_it_publish() -> None:
    for alarm in _of_type("AWS::CloudWatch::Alarm"):
        name = RESOURCES[alarm]["Properties"]["AlarmName"]["Fn::Sub"]
        assert fnmatch.fnmatchcase(name, STACK_ALARMS.split(":alarm:", 1)[1]), alarm


def test_only_the_notification_rule_may_fill_the_notification_dead_letter_queue() -> None:
    (statement,) = _statements(RESOURCES["NotificationDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"])
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["NotificationRule", "Arn"]}}
    }
    permission = RESOURCES["NotifyFunctionInvokePermission"]["Properties"]
    assert permission["SourceArn"] == {"Fn::GetAtt": ["NotificationRule", "Arn"]}


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_is_private_and_encrypted(bucket: str) -> None:
    properties = RESOURCES[bucket]["Properties"]
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_refuses_requests_without_tls(bucket: str) -> None:
    policies = [
        RESOURCES[name]["Properties"]
        for name in _of_type("AWS::S3::BucketPolicy")
        if RESOURCES[name]["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    denials = [
        statement
        for policy in policies
        for statement in _statements(policy["PolicyDocument"])
        if statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    ]
    assert [d["Condition"] for d in denials] == [{"Bool": {"aws:SecureTransport": "false"}}]
    assert sorted(map(_render, denials[0]["Resource"])) == [f"${{{bucket}.Arn}}", f"${{{bucket}.Arn}}/*"]


def _lifecycle_rules(bucket: str, key: str) -> list[dict[str, Any]]:
    rules = RESOURCES[bucket]["Properties"]["LifecycleConfiguration"]["Rules"]
    return [rule for rule in rules if rule["Status"] == "Enabled" and key.startswith(rule.get("Prefix", ""))]


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_aborts_abandoned_uploads(bucket: str) -> None:
    days = [
        rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        for rule in _lifecycle_rules(bucket, "any/key")
        if "AbortIncompleteMultipartUpload" in rule
    ]
    assert days and min(days) <= 7


def _noncurrent_days(bucket: str, key: str) -> int | None:
    """When S3 deletes the key's overwritten versions: the soonest of the rules that match it."""
    days = [
        rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
        for rule in _lifecycle_rules(bucket, key)
        if "NoncurrentVersionExpiration" in rule
    ]
    return min(days) if days else None


@pytest.mark.parametrize(
    "key",
    [
        LEASE_KEY,
        "_arrival/idempotency/iris#0a1b.json",
        trainer_heartbeat_key("i-0abc"),
        outcome_key("iris/may.csv", "v1"),
        SWEEP_STATE_KEY,
    ],
    ids=["leases", "idempotency", "heartbeats", "outcome-markers", "sweep-state"],
)
def test_bookkeeping_versions_do_not_pile_up(key: str) -> None:
    days = _noncurrent_days("ProcessedBucket", key)
    assert days is not None and days <= 7


def test_accepted_lists_keep_a_month_of_history_for_audit() -> None:
    assert _noncurrent_days("ProcessedBucket", accepted_list_key("iris")) == 30


def test_raw_versions_named_by_lineage_never_expire() -> None:
    assert _noncurrent_days("RawBucket", "iris/data.csv") is None


INFERENCE = "arn:${AWS::Partition}:s3:::${AWS::StackName}-inference-${AWS::AccountId}-${AWS::Region}"
BATCH_NEEDS = [
    ("s3:GetObject", f"{INFERENCE}/iris/input/may.csv"),
    ("s3:GetObjectVersion", f"{INFERENCE}/iris/input/may.csv"),
    ("s3:PutObject", f"{INFERENCE}/iris/output/may.predictions.parquet"),
    ("s3:GetObject", f"{INFERENCE}/iris/output/may.manifest.json"),
    ("s3:ListBucket", INFERENCE),
    ("s3:GetObject", f"${{ConfigBucket.Arn}}/{contract_key('iris')}"),
    ("s3:GetObject", "${ModelsBucket.Arn}/pointers/iris.json"),
    ("s3:GetObject", "${ModelsBucket.Arn}/bundles/iris/3/model.onnx"),
]


@pytest.mark.parametrize(("action", "resource"), BATCH_NEEDS)
def test_the_batch_function_may_do_what_it_does(action: str, resource: str) -> None:
    assert _allows(_identity_statements("BatchFunction"), action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("s3:PutObject", f"{INFERENCE}/iris/input/may.csv"),  # the files it scores stay as they came
        ("s3:DeleteObject", f"{INFERENCE}/iris/input/may.csv"),
        ("s3:GetObject", f"{INFERENCE}/iris/elsewhere.csv"),
        ("s3:PutObject", "${ModelsBucket.Arn}/pointers/iris.json"),
        ("s3:PutObject", f"${{ConfigBucket.Arn}}/{contract_key('iris')}"),
        ("s3:GetObject", f"{PROCESSED}/{accepted_list_key('iris')}"),
    ],
)
def test_the_batch_function_cannot_change_its_inputs_models_or_contracts(action: str, resource: str) -> None:
    assert not _allows(_identity_statements("BatchFunction"), action, resource)


def test_the_batch_function_uses_no_compute_templates() -> None:
    policies = RESOURCES["BatchFunction"]["Properties"]["Policies"]
    sam_templates = {name for policy in policies if isinstance(policy, dict) for name in policy}
    assert sam_templates - {"Statement"} <= SAM_TEMPLATES_WITHOUT_COMPUTE
    statements = _identity_statements("BatchFunction")
    assert not [s for s in statements for a in _listed(s["Action"]) if not a.startswith("s3:")]


CAPTURED = "${CaptureBucket.Arn}/iris/capture/2026/11/29/07/0a1b.jsonl.gz"


def test_the_serving_instance_may_list_the_models_bucket_so_a_missing_bundle_is_a_404() -> None:
    # On AWS a GET of a missing key is a 403 unless the caller may list the bucket itself (a request
    # without s3:prefix): serving would take a bundle not yet there for one it may not read.
    # (ServingFunction's SAM S3ReadPolicy lists the whole bucket.)
    listing = [
        statement
        for statement in _granting(_identity_statements("ServingRole"), "s3:ListBucket")
        if any(
            fnmatch.fnmatchcase("${ModelsBucket.Arn}", _render(pattern))
            for pattern in _listed(statement["Resource"])
        )
    ]
    assert any("Condition" not in statement for statement in listing), listing


@pytest.mark.parametrize("role", ["ServingRole", "ServingFunction"])
def test_serving_may_only_add_captures(role: str) -> None:
    statements = _identity_statements(role)
    assert _allows(statements, "s3:PutObject", CAPTURED)
    for action, resource in [
        ("s3:PutObject", "${CaptureBucket.Arn}/iris/other.json"),
        ("s3:GetObject", CAPTURED),
        ("s3:DeleteObject", CAPTURED),
        ("s3:PutObject", "${ModelsBucket.Arn}/bundles/capture/3/bundle.json"),
        ("s3:PutObject", "${ModelsBucket.Arn}/pointers/iris.json"),
    ]:
        assert not _allows(statements, action, resource), (action, resource)


DRIFT_NEEDS = [
    ("s3:ListBucket", "${ModelsBucket.Arn}"),
    ("s3:GetObject", "${ModelsBucket.Arn}/pointers/iris.json"),
    ("s3:GetObject", "${ModelsBucket.Arn}/bundles/iris/3/bundle.json"),
    ("s3:GetObject", "${ModelsBucket.Arn}/iris/drift/reference/3.parquet"),
    ("s3:PutObject", "${ModelsBucket.Arn}/iris/drift/reference/3.parquet"),
    ("s3:PutObject", "${ModelsBucket.Arn}/iris/drift/20261129T073000Z/report.html"),
    ("s3:PutObject", "${ModelsBucket.Arn}/iris/drift/latest.json"),
    ("s3:ListBucket", "${CaptureBucket.Arn}"),
    ("s3:GetObject", CAPTURED),
    ("s3:GetObject", f"{PROCESSED}/iris/data/{'a' * 64}.parquet"),
]


@pytest.mark.parametrize(("action", "resource"), DRIFT_NEEDS)
def test_the_drift_function_may_do_what_its_report_does(action: str, resource: str) -> None:
    assert _allows(_identity_statements("DriftFunction"), action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("s3:PutObject", "${ModelsBucket.Arn}/pointers/iris.json"),
        ("s3:PutObject", "${ModelsBucket.Arn}/bundles/iris/3/bundle.json"),
        ("s3:PutObject", CAPTURED),
        ("s3:DeleteObject", CAPTURED),
        ("s3:GetObject", f"{PROCESSED}/{accepted_list_key('iris')}"),
    ],
)
def test_the_drift_function_cannot_move_champions_or_touch_captures(action: str, resource: str) -> None:
    assert not _allows(_identity_statements("DriftFunction"), action, resource)


def test_the_drift_functions_report_prefix_cannot_reach_a_bundle() -> None:
    # GIVEN a model named "drift", whose bundles match the reports' `*/drift/*`
    bundle = "${ModelsBucket.Arn}/bundles/drift/3/bundle.json"
    properties = RESOURCES["DriftFunction"]["Properties"]
    denials = [s for s in _statements(properties["Policies"]) if s["Effect"] == "Deny"]
    assert _allows(_identity_statements("DriftFunction"), "s3:PutObject", bundle)
    # THEN an explicit deny keeps the function off every bundle and pointer
    assert _allows(denials, "s3:PutObject", bundle)
    assert _allows(denials, "s3:PutObject", "${ModelsBucket.Arn}/pointers/drift.json")


MARKER = f"{PROCESSED}/{outcome_key('iris/may.csv', 'v1')}"
SWEEP_NEEDS = [
    ("s3:ListBucketVersions", "${RawBucket.Arn}"),
    ("s3:GetObject", MARKER),
    ("s3:PutObject", MARKER),
    ("s3:GetObject", f"{PROCESSED}/{SWEEP_STATE_KEY}"),
    ("s3:PutObject", f"{PROCESSED}/{SWEEP_STATE_KEY}"),
    ("s3:ListBucket", PROCESSED),
    ("sqs:SendMessage", "${IngestQueue.Arn}"),
    ("sqs:GetQueueAttributes", "${IngestQueue.Arn}"),
]


@pytest.mark.parametrize(("action", "resource"), SWEEP_NEEDS)
def test_the_sweep_may_do_what_it_does(action: str, resource: str) -> None:
    assert _allows(_identity_statements("SweepFunction"), action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        # It sends notifications; it never reads, changes or ingests a file itself.
        ("s3:GetObject", "${RawBucket.Arn}/iris/may.csv"),
        ("s3:GetObjectVersion", "${RawBucket.Arn}/iris/may.csv"),
        ("s3:PutObject", "${RawBucket.Arn}/iris/may.csv"),
        ("s3:DeleteObjectVersion", "${RawBucket.Arn}/iris/may.csv"),
        ("s3:PutObject", f"{PROCESSED}/{accepted_list_key('iris')}"),
        ("s3:PutObject", f"{PROCESSED}/iris/data/0a1b.parquet"),
        ("s3:PutObject", f"{PROCESSED}/_arrival/idempotency/iris#0a1b.json"),
        ("sqs:SendMessage", "${TrainingQueue.Arn}"),
        ("sqs:ReceiveMessage", "${IngestQueue.Arn}"),
        ("sqs:DeleteMessage", "${IngestQueue.Arn}"),
        ("lambda:InvokeFunction", "${IngestFunction.Arn}"),
    ],
)
def test_the_sweep_cannot_read_change_or_ingest_files(action: str, resource: str) -> None:
    assert not _allows(_identity_statements("SweepFunction"), action, resource)


def test_captures_expire() -> None:
    (rule,) = [rule for rule in _lifecycle_rules("CaptureBucket", CAPTURED) if "ExpirationInDays" in rule]
    assert rule["ExpirationInDays"] == {"Ref": "CaptureRetentionDays"}


LOGIN_SECRET = "${MlflowLoginSecretArn}"


def test_only_the_trainer_reads_the_mlflow_login_and_only_that_secret() -> None:
    # GIVEN every role's grants, with the trainer's conditional one as deployed with a secret
    readers = [
        role
        for role in ROLES
        for grant in _granting(_identity_statements(role), "secretsmanager:GetSecretValue")
        if LOGIN_SECRET in [_render(resource) for resource in _listed(grant["Resource"])]
    ]

    # THEN the trainer, the one role that talks to MLflow, reads its login and nothing else
    assert readers == ["TrainerRole"]
    (grant,) = _granting(_identity_statements("TrainerRole"), "secretsmanager:GetSecretValue")
    assert _listed(grant["Action"]) == ["secretsmanager:GetSecretValue"]
    assert [_render(resource) for resource in _listed(grant["Resource"])] == [LOGIN_SECRET]
    other = "arn:aws:secretsmanager:us-east-1:123456789012:secret:database/password-AbCdEf"
    assert not _allows(_identity_statements("TrainerRole"), "secretsmanager:GetSecretValue", other)


def test_the_login_grant_exists_only_when_a_secret_is_named() -> None:
    # Without a secret (the local cloud's tests may deploy without one) the policy must still be
    # valid: an empty Resource would make the whole role fail to deploy.
    statements = RESOURCES["TrainerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (conditional,) = [statement for statement in statements if "Fn::If" in statement]
    condition, granted, otherwise = conditional["Fn::If"]
    assert TEMPLATE["Conditions"][condition] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MlflowLoginSecretArn"}, ""]}]
    }
    assert granted["Resource"] == {"Ref": "MlflowLoginSecretArn"}
    assert otherwise == {"Ref": "AWS::NoValue"}


SERVING_EVENTS = {
    name: event["Properties"]
    for name, event in RESOURCES["ServingFunction"]["Properties"]["Events"].items()
    if event["Type"] == "Api"
}
# What a load balancer's health check calls, and cannot send a header to.
OPEN_PROBES = {("/health", "GET"), ("/ready", "GET")}


def test_every_serving_api_method_needs_the_api_key_but_the_probes() -> None:
    for name, event in SERVING_EVENTS.items():
        assert event["RestApiId"] == {"Ref": "ServingApi"}, name
        key_required = event.get("Auth", {}).get("ApiKeyRequired", False)
        assert key_required is ((event["Path"], event["Method"]) not in OPEN_PROBES), name
    # Every other path and method falls to the keyed root and proxy.
    routes = {(event["Path"], event["Method"]) for event in SERVING_EVENTS.values()}
    assert routes == {("/", "ANY"), ("/{proxy+}", "ANY"), *OPEN_PROBES}
    # No other API reaches a function.
    assert _of_type("AWS::Serverless::Api") == ["ServingApi"] and not _of_type("AWS::ApiGateway::RestApi")
    for function in _of_type("AWS::Serverless::Function"):
        events = RESOURCES[function]["Properties"].get("Events", {}).values()
        assert function == "ServingFunction" or not [e for e in events if e["Type"] == "Api"], function


def test_the_usage_plan_throttles_the_key_and_has_a_quota_both_parameters() -> None:
    plan = RESOURCES["ServingUsagePlan"]
    stage = RESOURCES["ServingApi"]["Properties"]["StageName"]
    assert plan["Properties"]["ApiStages"] == [{"ApiId": {"Ref": "ServingApi"}, "Stage": stage}]
    assert plan["DependsOn"] == f"ServingApi{stage}Stage"  # the stage SAM makes, which must exist first
    assert plan["Properties"]["Throttle"] == {
        "RateLimit": {"Ref": "ServingApiRateLimit"},
        "BurstLimit": {"Ref": "ServingApiBurstLimit"},
    }
    assert plan["Properties"]["Quota"] == {
        "Limit": {"Ref": "ServingApiQuotaLimit"},
        "Period": {"Ref": "ServingApiQuotaPeriod"},
    }
    for parameter in (
        "ServingApiRateLimit",
        "ServingApiBurstLimit",
        "ServingApiQuotaLimit",
        "ServingApiQuotaPeriod",
    ):
        assert "Default" in TEMPLATE["Parameters"][parameter], parameter
    assert RESOURCES["ServingUsagePlanKey"]["Properties"] == {
        "KeyId": {"Ref": "ServingApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": "ServingUsagePlan"},
    }


def test_the_api_key_is_generated_into_secrets_manager_and_both_paths_take_it_from_there() -> None:
    generated = RESOURCES["ServingApiKeySecret"]["Properties"]["GenerateSecretString"]
    assert "SecretString" not in RESOURCES["ServingApiKeySecret"]["Properties"]  # never in the template
    # API Gateway's minimum is 20 characters; a header value needs no punctuation or spaces.
    assert generated["PasswordLength"] >= 20 and generated["ExcludePunctuation"] is True
    assert generated["IncludeSpace"] is False
    api_key = RESOURCES["ServingApiKey"]["Properties"]
    assert api_key["Enabled"] is True
    assert api_key["Value"] == {"Fn::Sub": "{{resolve:secretsmanager:${ServingApiKeySecret}}}"}
    # The server is told where the secret is, never the key (user data is readable by many).
    user_data = RESOURCES["ServingInstance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "export ARRIVAL_SERVING_API_KEY_SECRET=${ServingApiKeySecret}\n" in user_data
    assert "ARRIVAL_SERVING_API_KEY=" not in user_data
    assert TEMPLATE["Outputs"]["ServingApiKeySecretArn"]["Value"] == {"Ref": "ServingApiKeySecret"}


@pytest.mark.parametrize("role", ROLES)
def test_only_the_serving_instance_reads_the_api_key_and_the_trainer_the_mlflow_login(role: str) -> None:
    statements = _identity_statements(role)
    reads = _granting(statements, "secretsmanager:GetSecretValue")
    expected = {
        "ServingRole": [{"Ref": "ServingApiKeySecret"}],
        "TrainerRole": [{"Ref": "MlflowLoginSecretArn"}],
    }.get(role, [])
    assert [read["Resource"] for read in reads] == expected, role
    secret_actions = [a for s in statements for a in _listed(s["Action"]) if a.startswith("secretsmanager:")]
    assert secret_actions == ["secretsmanager:GetSecretValue"] * len(expected), role
