"""What the operator's commands do against a deployed stack (LocalStack or AWS, by AWS_ENDPOINT_URL)."""

from __future__ import annotations

from pathlib import Path

import boto3

from common.contracts import parse_contract
from common.ingest import contract_key
from localcloud.deploy import stack_outputs


def put_contract(path: Path, stack_name: str) -> str:
    """Upload after validating, so a typo never reaches the pipeline. Returns the S3 address."""
    text = path.read_bytes()
    contract = parse_contract(text)
    session = boto3.session.Session()
    bucket = stack_outputs(session.client("cloudformation"), stack_name)["ConfigBucketName"]
    key = contract_key(contract.model)
    session.client("s3").put_object(Bucket=bucket, Key=key, Body=text, ContentType="application/yaml")
    return f"s3://{bucket}/{key}"
