"""The local stand-in for the CloudWatch agent ships an instance's output line by line, each once,
including what is written before it starts and the last lines before it stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localcloud.log_shipper import LogShipper, _batches


@pytest.fixture
def logs() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("logs", region_name="us-east-1")
        client.create_log_group(logGroupName="/arrival/s/trainer")
        yield client


def _shipped(logs: Any) -> list[str]:
    events = logs.get_log_events(logGroupName="/arrival/s/trainer", logStreamName="i-1")["events"]
    return [event["message"] for event in events]


def test_lines_written_before_during_and_just_before_the_stop_are_shipped_once(
    logs: Any, tmp_path: Path
) -> None:
    output = tmp_path / "instance-i-1.log"
    shipper = LogShipper(logs, output, "/arrival/s/trainer", "i-1")
    output.write_bytes(b"booting\n")
    shipper.start()
    with output.open("ab") as stream:
        stream.write(b"training iris\nhalf a li")
        stream.flush()
        stream.write(b"ne\n\ntrained iris\n")
    shipper.stop()

    assert _shipped(logs) == ["booting", "training iris", "half a line", " ", "trained iris"]


def test_a_group_that_does_not_exist_is_not_shipped_to_and_nothing_fails(tmp_path: Path) -> None:
    with mock_aws():
        client = boto3.client("logs", region_name="us-east-1")
        output = tmp_path / "instance-i-2.log"
        output.write_bytes(b"line\n")
        shipper = LogShipper(client, output, "/arrival/absent/trainer", "i-2").start()
        shipper.stop()
        assert client.describe_log_groups()["logGroups"] == []


def test_batches_keep_to_cloudwatchs_limits() -> None:
    lines = ["x" * 1000] * 2500
    batches = _batches(lines)
    assert sum(len(batch) for batch in batches) == 2500
    assert all(sum(len(line) + 26 for line in batch) <= 1_000_000 for batch in batches)
    assert len(_batches(["a"] * 25_000)) == 3
