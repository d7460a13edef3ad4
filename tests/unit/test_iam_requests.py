"""What the local cloud's IAM enforcement checks for each call (iam_requests.py): the action can
depend on a parameter, and a call may need more than one action."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arrival_lambda_executor.iam_policy import Request
from arrival_lambda_executor.iam_requests import LaunchTemplateFacts, NothingKnown, requests_for

ACCOUNT, REGION = "000000000000", "us-east-1"
TEMPLATE_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0abc"
NETWORK_TEMPLATE_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0net"
TRAINER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/arrival-TrainerRole"


class _Cloud(NothingKnown):
    """One stack's trainer launch template, instance profile, tagged instance, secret and stack."""

    def launch_template(self, specification: Mapping[str, Any]) -> LaunchTemplateFacts | None:
        if specification.get("LaunchTemplateId") == "lt-0net":
            # As template.yaml's trainer template: its subnet and group on the primary interface.
            return LaunchTemplateFacts(
                NETWORK_TEMPLATE_ARN,
                image_id="ami-1",
                security_group_ids=("sg-trainer",),
                subnet_id="subnet-a",
            )
        if specification.get("LaunchTemplateId") != "lt-0abc":
            return None
        return LaunchTemplateFacts(
            TEMPLATE_ARN, image_id="ami-1", instance_profile="arn:aws:iam::0:instance-profile/trainer"
        )

    def profile_role_arn(self, profile: str) -> str | None:
        return TRAINER_ROLE if profile.endswith("/trainer") else None

    def instance_tags(self, instance_id: str) -> Mapping[str, str]:
        return {"arrival:stack": "arrival", "arrival:role": "trainer"} if instance_id == "i-1" else {}

    def secret_arn(self, secret_id: str) -> str | None:
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-AbCdEf"

    def stack_arn(self, stack_name: str) -> str | None:
        return f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack_name}/5f3e"


def _for(service: str, operation: str, **params: object) -> list[Request] | None:
    return requests_for(service, operation, params, ACCOUNT, REGION, _Cloud())


def test_a_read_by_version_is_get_object_version_and_a_plain_one_get_object() -> None:
    key = "arn:aws:s3:::processed/iris/data/0a1b.parquet"
    for operation in ("GetObject", "HeadObject"):
        plain = _for("s3", operation, Bucket="processed", Key="iris/data/0a1b.parquet")
        versioned = _for("s3", operation, Bucket="processed", Key="iris/data/0a1b.parquet", VersionId="v1")
        assert plain == [Request("s3:GetObject", key)]
        assert versioned == [Request("s3:GetObjectVersion", key)]


def test_a_copy_writes_its_target_and_reads_its_source_by_version() -> None:
    requests = _for(
        "s3",
        "CopyObject",
        Bucket="quarantine",
        Key="iris/bad.csv",
        CopySource="raw/iris/bad%20file.csv?versionId=v7",
    )
    assert requests == [
        Request("s3:PutObject", "arn:aws:s3:::quarantine/iris/bad.csv"),
        Request("s3:GetObjectVersion", "arn:aws:s3:::raw/iris/bad file.csv"),
    ]


def test_a_listing_is_list_bucket_on_the_bucket_with_its_prefix() -> None:
    assert _for("s3", "ListObjectsV2", Bucket="processed", Prefix="iris/") == [
        Request("s3:ListBucket", "arn:aws:s3:::processed", {"s3:prefix": ["iris/"]})
    ]


def test_a_queue_is_named_by_the_arn_its_url_stands_for() -> None:
    url = "http://127.0.0.1:4566/000000000000/arrival-TrainingQueue.fifo"
    assert _for("sqs", "DeleteMessageBatch", QueueUrl=url) == [
        Request("sqs:DeleteMessage", "arn:aws:sqs:us-east-1:000000000000:arrival-TrainingQueue.fifo")
    ]


def test_a_servers_reload_queue_and_subscription_are_authorized_on_the_queue_and_the_topic() -> None:
    queue = "arn:aws:sqs:us-east-1:000000000000:prod-serving-reload-i-0abc"
    url = "http://localhost:4566/000000000000/prod-serving-reload-i-0abc"
    topic = "arn:aws:sns:us-east-1:000000000000:prod-serving-reload"
    assert _for("sqs", "CreateQueue", QueueName="prod-serving-reload-i-0abc") == [
        Request("sqs:CreateQueue", queue)
    ]
    assert _for("sqs", "SetQueueAttributes", QueueUrl=url, Attributes={}) == [
        Request("sqs:SetQueueAttributes", queue)
    ]
    assert _for("sqs", "DeleteQueue", QueueUrl=url) == [Request("sqs:DeleteQueue", queue)]
    assert _for("sns", "Subscribe", TopicArn=topic, Protocol="sqs", Endpoint=queue) == [
        Request("sns:Subscribe", topic)
    ]
    assert _for("sns", "Unsubscribe", SubscriptionArn=f"{topic}:0f1e2d3c-aaaa-bbbb-cccc-000000000000") == [
        Request("sns:Unsubscribe", topic)
    ]


def test_events_go_to_each_bus_the_entries_name() -> None:
    entries = [{"EventBusName": "arrival-bus"}, {"EventBusName": "arrival-bus"}, {}]
    assert _for("events", "PutEvents", Entries=entries) == [
        Request("events:PutEvents", "arn:aws:events:us-east-1:000000000000:event-bus/arrival-bus"),
        Request("events:PutEvents", "arn:aws:events:us-east-1:000000000000:event-bus/default"),
    ]


def test_a_function_is_named_by_its_arn_whatever_form_the_call_uses() -> None:
    arn = "arn:aws:lambda:us-east-1:000000000000:function:arrival-Reconcile"
    assert _for("lambda", "Invoke", FunctionName="arrival-Reconcile") == [
        Request("lambda:InvokeFunction", arn)
    ]
    assert _for("lambda", "Invoke", FunctionName=arn, Qualifier="live") == [
        Request("lambda:InvokeFunction", f"{arn}:live")
    ]
    assert _for("lambda", "Invoke", FunctionName="000000000000:function:arrival-Reconcile") == [
        Request("lambda:InvokeFunction", arn)
    ]


def test_get_caller_identity_needs_nothing_and_an_unmapped_call_is_not_guessed() -> None:
    assert _for("sts", "GetCallerIdentity") == []
    assert _for("sns", "Publish", TopicArn="arn:aws:sns:us-east-1:000000000000:t") == [
        Request("sns:Publish", "arn:aws:sns:us-east-1:000000000000:t")
    ]
    assert _for("sns", "ListTopics") is None


def test_a_launch_from_a_template_is_authorized_on_every_resource_it_touches_with_the_template() -> None:
    tags = [{"Key": "arrival:role", "Value": "trainer"}]
    requests = _for(
        "ec2",
        "RunInstances",
        LaunchTemplate={"LaunchTemplateId": "lt-0abc", "Version": "$Latest"},
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    assert requests is not None
    launches = {request.resource: request for request in requests if request.action == "ec2:RunInstances"}
    assert set(launches) == {
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/*",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/*",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/*",
        f"arn:aws:ec2:{REGION}::image/ami-1",
        TEMPLATE_ARN,
    }
    assert all(request.context["ec2:LaunchTemplate"] == [TEMPLATE_ARN] for request in launches.values())
    [tagging] = [request for request in requests if request.action == "ec2:CreateTags"]
    assert tagging.context["ec2:CreateAction"] == ["RunInstances"]
    assert tagging.context["aws:RequestTag/arrival:role"] == ["trainer"]
    [passing] = [request for request in requests if request.action == "iam:PassRole"]
    assert passing == Request("iam:PassRole", TRAINER_ROLE, {"iam:PassedToService": ["ec2.amazonaws.com"]})


def _network_resources(**params: object) -> set[str]:
    """The subnets and security groups a RunInstances is authorized on."""
    requests = _for("ec2", "RunInstances", MinCount=1, MaxCount=1, **params) or []
    return {
        request.resource.rsplit(":", 1)[1]
        for request in requests
        if request.action == "ec2:RunInstances"
        and (":subnet/" in request.resource or ":security-group/" in request.resource)
    }


def test_a_launch_is_authorized_on_its_templates_subnet_and_group_not_on_any() -> None:
    assert _network_resources(LaunchTemplate={"LaunchTemplateId": "lt-0net"}) == {
        "subnet/subnet-a",
        "security-group/sg-trainer",
    }


def test_a_launch_is_authorized_on_each_network_interface_it_names() -> None:
    # EC2 authorizes the subnet and groups of every interface a request specifies: a request that
    # names them there must not be checked against the template's (or against "*").
    interfaces = [
        {"DeviceIndex": 0, "SubnetId": "subnet-b", "Groups": ["sg-1"]},
        {"DeviceIndex": 1, "SubnetId": "subnet-c", "Groups": ["sg-2", "sg-1"]},
    ]
    assert _network_resources(
        LaunchTemplate={"LaunchTemplateId": "lt-0net"}, NetworkInterfaces=interfaces
    ) == {
        "subnet/subnet-b",
        "subnet/subnet-c",
        "security-group/sg-1",
        "security-group/sg-2",
    }


def test_a_requests_own_subnet_and_groups_override_the_templates() -> None:
    assert _network_resources(
        LaunchTemplate={"LaunchTemplateId": "lt-0net"}, SubnetId="subnet-z", SecurityGroupIds=["sg-z"]
    ) == {"subnet/subnet-z", "security-group/sg-z"}


def test_terminating_an_instance_carries_its_tags_for_the_policy_to_check() -> None:
    [request] = _for("ec2", "TerminateInstances", InstanceIds=["i-1"]) or []
    assert request.resource == f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-1"
    assert request.context["aws:ResourceTag/arrival:stack"] == ["arrival"]
    assert request.context["aws:ResourceTag/arrival:role"] == ["trainer"]
    [untagged] = _for("ec2", "TerminateInstances", InstanceIds=["i-2"]) or []
    assert untagged.context == {}
    assert _for("ec2", "DescribeInstances") == [Request("ec2:DescribeInstances", "*")]


def test_a_secret_and_a_stack_named_by_name_are_authorized_on_their_full_arns() -> None:
    assert _for("secretsmanager", "GetSecretValue", SecretId="arrival/api-key") == [
        Request(
            "secretsmanager:GetSecretValue",
            f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:arrival/api-key-AbCdEf",
        )
    ]
    assert _for("cloudformation", "DescribeStacks", StackName="arrival") == [
        Request(
            "cloudformation:DescribeStacks", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/arrival/5f3e"
        )
    ]


def test_log_stream_calls_are_authorized_on_the_stream_under_its_group() -> None:
    assert _for("logs", "PutLogEvents", logGroupName="/arrival/a/trainer", logStreamName="i-1") == [
        Request(
            "logs:PutLogEvents",
            f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/arrival/a/trainer:log-stream:i-1",
        )
    ]


def test_tagging_an_existing_resource_is_authorized_on_its_arn_without_the_launch_action() -> None:
    requests = _for(
        "ec2",
        "CreateTags",
        Resources=["i-1", "vol-0abc", "ami-0def"],
        Tags=[{"Key": "arrival:role", "Value": "trainer"}],
    )
    assert [request.resource for request in requests or []] == [
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-1",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/vol-0abc",
        f"arn:aws:ec2:{REGION}::image/ami-0def",
    ]
    instance = (requests or [])[0]
    assert "ec2:CreateAction" not in instance.context  # so a grant limited to launches does not apply
    assert instance.context["aws:ResourceTag/arrival:stack"] == ["arrival"]
    assert instance.context["aws:RequestTag/arrival:role"] == ["trainer"]
