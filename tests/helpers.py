"""Polls with deadlines: the tests wait for conditions, never for fixed times."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, interval: float = 0.25, what: str = "") -> T:
    """Call probe until it returns something truthy, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


def receive_one(sqs: Any, queue_url: str, timeout: float) -> dict[str, Any]:
    """The first message to arrive on a queue within timeout (long-polling, not sleeping)."""

    def probe() -> dict[str, Any] | None:
        messages = sqs.receive_message(
            QueueUrl=queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=1, MessageAttributeNames=["All"]
        ).get("Messages", [])
        return messages[0] if messages else None

    return eventually(probe, timeout, interval=0, what=f"a message on {queue_url}")
