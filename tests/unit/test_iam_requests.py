"""What the local cloud's IAM enforcement checks for each call (iam_requests.py): the action can
depend on a parameter, and a call may need more than one action."""

from __future__ import annotations

from arrival_lambda_executor.iam_policy import Request
from arrival_lambda_executor.iam_requests import requests_for

ACCOUNT, REGION = "000000000000", "us-east-1"


def _for(service: str, operation: str, **params: object) -> list[Request] | None:
    return requests_for(service, operation, params, ACCOUNT, REGION)


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
