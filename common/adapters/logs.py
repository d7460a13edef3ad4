"""The only place arrival reads CloudWatch Logs (`arrival logs`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient


@cache
def logs_client() -> CloudWatchLogsClient:
    return boto3.client("logs")


class NoLogGroupError(LookupError):
    """The group does not exist (yet): a function not invoked since the deploy, or an old stack."""


@dataclass(frozen=True)
class LogLine:
    event_id: str
    timestamp_ms: int
    stream: str
    message: str


def lines_since(group: str, start_ms: int) -> list[LogLine]:
    """Every line of the group's streams from `start_ms` on, oldest first."""
    client = logs_client()
    try:
        pages = client.get_paginator("filter_log_events").paginate(logGroupName=group, startTime=start_ms)
        found = [
            LogLine(event["eventId"], event["timestamp"], event["logStreamName"], event["message"])
            for page in pages
            for event in page.get("events", [])
        ]
    except client.exceptions.ResourceNotFoundException as error:
        raise NoLogGroupError(group) from error
    return sorted(found, key=lambda line: (line.timestamp_ms, line.event_id))
