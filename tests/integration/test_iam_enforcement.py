"""IAM enforced by the local cloud (`iam_enforcement`, on for every test): a session of an assumed role gets
exactly what the role's policies allow, refused as AWS refuses; the operator stays unrestricted."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from localcloud.settings import LocalCloudSettings
from tests.conftest import LocalCloud

pytestmark = pytest.mark.integration

# Unique per run: the session's cloud is shared, and names are never torn down.
_RUN = uuid.uuid4().hex[:8]
BUCKET = f"iam-data-{_RUN}"
ALLOWED_QUEUE, OTHER_QUEUE = f"iam-allowed-{_RUN}", f"iam-other-{_RUN}"
ROLE = f"iam-test-{_RUN}"


@pytest.fixture(scope="module")
def cloud(local_cloud: LocalCloud) -> LocalCloudSettings:
    """The session's local cloud, which enforces IAM as every test's does."""
    assert local_cloud.settings.iam_enforcement
    return local_cloud.settings


def _operator(settings: LocalCloudSettings) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id="test",
        aws_secret_access_key="test",  # pragma: allowlist secret  # LocalStack's dummy
        region_name=settings.region,
    )


def _assumed(
    cloud: LocalCloudSettings, role_name: str, statements: list[dict[str, Any]]
) -> boto3.session.Session:
    """A session of a new role holding these statements, assumed as a Lambda function assumes its role."""
    operator, url = _operator(cloud), cloud.aws_endpoint_url
    iam = operator.client("iam", endpoint_url=url)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_role_policy(RoleName=role_name, PolicyName="data", PolicyDocument=json.dumps(policy))
    credentials = operator.client("sts", endpoint_url=url).assume_role(
        RoleArn=role["Arn"], RoleSessionName="test"
    )["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=cloud.region,
    )


@pytest.fixture(scope="module")
def role_session(cloud: LocalCloudSettings) -> boto3.session.Session:
    """A session of a role that may read and write `allowed/` in the bucket (not by version) and
    send to one queue, assumed as a Lambda function or an instance assumes its role."""
    operator, url = _operator(cloud), cloud.aws_endpoint_url
    operator.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    operator.client("s3", endpoint_url=url).put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )
    sqs = operator.client("sqs", endpoint_url=url)
    allowed_queue = sqs.create_queue(QueueName=ALLOWED_QUEUE)["QueueUrl"]
    sqs.create_queue(QueueName=OTHER_QUEUE)
    allowed_queue_arn = sqs.get_queue_attributes(QueueUrl=allowed_queue, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": f"arn:aws:s3:::{BUCKET}/allowed/*",
        },
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": allowed_queue_arn},
    ]
    return _assumed(cloud, ROLE, statements)


def _refused(call: Any, **arguments: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as refused:
        call(**arguments)
    error: dict[str, Any] = dict(refused.value.response["Error"])
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, refused.value.response
    return error


def test_a_role_gets_what_its_policy_allows_and_access_denied_for_the_rest(
    cloud: LocalCloudSettings, role_session: boto3.session.Session
) -> None:
    s3 = role_session.client("s3", endpoint_url=cloud.aws_endpoint_url)
    put = s3.put_object(Bucket=BUCKET, Key="allowed/a.csv", Body=b"a,b\n1,2\n")
    assert s3.get_object(Bucket=BUCKET, Key="allowed/a.csv")["Body"].read() == b"a,b\n1,2\n"

    # Outside its prefix: refused, naming the role, the action and the resource
    error = _refused(s3.put_object, Bucket=BUCKET, Key="elsewhere/a.csv", Body=b"x")
    assert error["Code"] == "AccessDenied"
    assert f"assumed-role/{ROLE}/test" in error["Message"]
    assert f'"arn:aws:s3:::{BUCKET}/elsewhere/a.csv"' in error["Message"]

    # A GET by version id is s3:GetObjectVersion, which s3:GetObject does not cover (issue 17's hole)
    error = _refused(s3.get_object, Bucket=BUCKET, Key="allowed/a.csv", VersionId=put["VersionId"])
    assert "s3:GetObjectVersion" in error["Message"]


def test_a_missing_key_is_a_403_without_list_bucket_and_a_404_with_it(
    cloud: LocalCloudSettings, role_session: boto3.session.Session
) -> None:
    """AWS hides whether a key exists from a role that may not list the bucket: code that takes a 404 as
    "missing" (a dedupe marker, a pointer not yet written) needs s3:ListBucket to see one."""
    s3 = role_session.client("s3", endpoint_url=cloud.aws_endpoint_url)
    error = _refused(s3.get_object, Bucket=BUCKET, Key="allowed/never-written.json")
    assert error["Code"] == "AccessDenied" and "s3:ListBucket" in error["Message"]
    assert "403, not 404" in error["Message"]
    assert _refused(s3.head_object, Bucket=BUCKET, Key="allowed/never-written.json")["Code"] == "403"
    s3.put_object(Bucket=BUCKET, Key="allowed/deleted.json", Body=b"{}")
    # The role may not delete: the operator does, leaving a delete marker in the versioned bucket
    _operator(cloud).client("s3", endpoint_url=cloud.aws_endpoint_url).delete_object(
        Bucket=BUCKET, Key="allowed/deleted.json"
    )
    assert _refused(s3.get_object, Bucket=BUCKET, Key="allowed/deleted.json")["Code"] == "AccessDenied"

    listing = _assumed(
        cloud,
        f"{ROLE}-lists",
        [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/allowed/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        ],
    ).client("s3", endpoint_url=cloud.aws_endpoint_url)
    with pytest.raises(ClientError) as missing:
        listing.get_object(Bucket=BUCKET, Key="allowed/never-written.json")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as missing:
        listing.head_object(Bucket=BUCKET, Key="allowed/deleted.json")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # Outside what it may read, a missing key is refused for the read itself, as on AWS
    error = _refused(listing.get_object, Bucket=BUCKET, Key="elsewhere/never-written.json")
    assert "s3:GetObject" in error["Message"]


def test_sqs_is_checked_per_queue(cloud: LocalCloudSettings, role_session: boto3.session.Session) -> None:
    sqs = role_session.client("sqs", endpoint_url=cloud.aws_endpoint_url)
    operator_sqs = _operator(cloud).client("sqs", endpoint_url=cloud.aws_endpoint_url)
    allowed = operator_sqs.get_queue_url(QueueName=ALLOWED_QUEUE)["QueueUrl"]
    other = operator_sqs.get_queue_url(QueueName=OTHER_QUEUE)["QueueUrl"]

    sqs.send_message(QueueUrl=allowed, MessageBody="{}")
    error = _refused(sqs.send_message, QueueUrl=other, MessageBody="{}")
    assert "sqs:SendMessage" in error["Message"] and OTHER_QUEUE in error["Message"]
    _refused(sqs.receive_message, QueueUrl=allowed)


def test_an_operation_the_local_cloud_cannot_check_is_refused_not_let_through(
    cloud: LocalCloudSettings, role_session: boto3.session.Session
) -> None:
    error = _refused(role_session.client("sns", endpoint_url=cloud.aws_endpoint_url).list_topics)
    assert "sns:ListTopics" in error["Message"] and "cannot check this operation yet" in error["Message"]


def test_the_operator_and_get_caller_identity_stay_unrestricted(
    cloud: LocalCloudSettings, role_session: boto3.session.Session
) -> None:
    identity = role_session.client("sts", endpoint_url=cloud.aws_endpoint_url).get_caller_identity()
    assert f":assumed-role/{ROLE}/" in identity["Arn"]
    operator_s3 = _operator(cloud).client("s3", endpoint_url=cloud.aws_endpoint_url)
    operator_s3.put_object(Bucket=BUCKET, Key="elsewhere/a.csv", Body=b"x")
    assert operator_s3.get_object(Bucket=BUCKET, Key="elsewhere/a.csv")["Body"].read() == b"x"
