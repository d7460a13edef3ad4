"""The only place arrival's Lambda code publishes pipeline events (EventBridge)."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

SOURCE = "arrival"


@cache
def events_client() -> EventBridgeClient:
    return boto3.client("events")


def publish(
    bus_name: str, detail_type: str, detail: dict[str, Any], resources: list[str] | None = None
) -> None:
    response = events_client().put_events(
        Entries=[
            {
                "EventBusName": bus_name,
                "Source": SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, default=str),
                "Resources": resources or [],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"EventBridge refused {detail_type}: {response['Entries']}")
