"""`arrival demo`: drop a sample file into the raw bucket and follow it through the chain."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import boto3
from botocore.exceptions import ClientError
from rich.console import Console

from localcloud.deploy import stack_outputs


def _sample_csv(rows: int = 200) -> bytes:
    """A small deterministic dataset: two numeric features and a label."""
    buffer = io.StringIO()
    buffer.write("sepal_length,sepal_width,species\n")
    for index in range(rows):
        length = 4.5 + (index * 37 % 30) / 10
        width = 2.0 + (index * 17 % 20) / 10
        buffer.write(f"{length:.1f},{width:.1f},{'setosa' if width > length / 2 else 'versicolor'}\n")
    return buffer.getvalue().encode()


def _wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)
    return result


def run_demo(stack_name: str, console: Console) -> None:
    session = boto3.session.Session()
    outputs = stack_outputs(session.client("cloudformation"), stack_name)
    s3 = session.client("s3")
    key = f"demo/sample-{int(time.time())}.csv"
    started = time.monotonic()

    put = s3.put_object(Bucket=outputs["RawBucketName"], Key=key, Body=_sample_csv())
    console.print(
        f"[green]1[/green] uploaded s3://{outputs['RawBucketName']}/{key} (version {put['VersionId']})"
    )

    def receipt() -> dict[str, Any] | None:
        try:
            body = s3.get_object(Bucket=outputs["ProcessedBucketName"], Key=f"receipts/{key}.json")["Body"]
        except ClientError:
            return None
        document: dict[str, Any] = json.loads(body.read())
        return document

    document = _wait_for(receipt, 120, "ingest")
    console.print(
        f"[green]2[/green] S3 -> SQS -> ingest Lambda (run by LocalStack) "
        f"in {time.monotonic() - started:.2f} s: receipt s3://{outputs['ProcessedBucketName']}/receipts/{key}.json"
    )
    console.print_json(data=document)
    logs = session.client("logs")
    group = f"/aws/lambda/{outputs['IngestFunctionName']}"

    def log_line() -> str | None:
        try:
            events = logs.filter_log_events(logGroupName=group, filterPattern='"ingested"')["events"]
        except ClientError:
            return None
        matching = [event["message"] for event in events if key in event["message"]]
        return matching[0] if matching else None

    console.print(f"[green]3[/green] the handler's log line in CloudWatch Logs ({group}):")
    console.print_json(_wait_for(log_line, 30, "the ingest log line"))
