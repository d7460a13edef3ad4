"""Polls with deadlines: the tests wait for conditions, never for fixed times."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
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


class QueueDrain:
    """Takes every message off a queue in the background and keeps it under `key_of(body)`, so each
    test sees only what concerns it. `active` gates draining (e.g. only while a trainer runs)."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        key_of: Callable[[Any], Any],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self._sqs, self._queue_url, self._key_of, self._active = sqs, queue_url, key_of, active
        self._kept: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._active():
                self._stop.wait(0.5)
                continue
            messages = self._sqs.receive_message(
                QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
            ).get("Messages", [])
            for message in messages:
                body = json.loads(message["Body"])
                with self._lock:
                    self._kept[self._key_of(body)].append({"body": body, "attributes": message["Attributes"]})
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def of(self, key: Any) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._kept[key])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
