"""The local stand-in for the CloudWatch agent an instance's AMI runs on AWS: it follows a booted
instance's output file and puts each new line into the stack's log group (the user data's
ARRIVAL_LOG_GROUP), a stream per instance, so `arrival logs trainer|serving` reads instances the same
way in both places."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

LOG = logging.getLogger("arrival.instance_agent")
# CloudWatch Logs takes at most 10,000 events and 1 MiB per PutLogEvents, 256 KiB per event.
_MAX_EVENTS = 10_000
_MAX_BATCH_BYTES = 1_000_000
_MAX_EVENT_BYTES = 256 * 1024 - 26
_POLL_SECONDS = 0.5


class LogShipper:
    """Ships the lines appended to `path` until stopped, then what is left."""

    def __init__(self, logs: Any, path: Path, group: str, stream: str) -> None:
        self._logs, self._path, self._group, self._stream = logs, path, group, stream
        self._offset = path.stat().st_size if path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs-{stream}", daemon=True)

    def start(self) -> LogShipper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._logs.create_log_stream(logGroupName=self._group, logStreamName=self._stream)
        except self._logs.exceptions.ResourceAlreadyExistsException:
            pass
        except (ClientError, BotoCoreError) as error:
            # A stack deployed before its log groups existed: the instance runs, unshipped.
            LOG.warning("not shipping %s to %s: %s", self._stream, self._group, error)
            return
        while not self._stop.wait(_POLL_SECONDS):
            self._ship_new_lines()
        self._ship_new_lines()

    def _ship_new_lines(self) -> None:
        with self._path.open("rb") as output:
            output.seek(self._offset)
            chunk = output.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for its end
        if not complete:
            return
        now_ms = int(time.time() * 1000)
        lines = [line.decode(errors="replace")[:_MAX_EVENT_BYTES] for line in complete.splitlines()]
        try:
            for batch in _batches([line or " " for line in lines]):
                self._logs.put_log_events(
                    logGroupName=self._group,
                    logStreamName=self._stream,
                    logEvents=[{"timestamp": now_ms, "message": line} for line in batch],
                )
        except (ClientError, BotoCoreError) as error:
            LOG.warning("shipping %s to %s failed, will retry: %s", self._stream, self._group, error)
            return
        self._offset += len(complete)


def _batches(lines: list[str]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for line in lines:
        cost = len(line.encode()) + 26  # CloudWatch counts 26 bytes of overhead per event
        if len(batches[-1]) >= _MAX_EVENTS or size + cost > _MAX_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(line)
        size += cost
    return [batch for batch in batches if batch]
