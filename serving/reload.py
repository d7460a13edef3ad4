"""How a reload hint reaches every worker process of one serving instance.

`arrival-serve` runs one uvicorn worker process per core (serving/main.py), each holding every model.
SQS hands a message to one receiver only, so if each worker read the instance's reload queue, a
promotion would reach one worker at once and the others at their next poll. Instead, exactly one
process per instance reads the queue: arrival-serve's parent, uvicorn's supervisor, which holds no
model and answers no request. On each message it bumps a generation number in a small file
(`ReloadSignal`), and every worker reads that file every `SIGNAL_CHECK_SECONDS` and refreshes when it
changed (ModelStore.start_background).

Why the parent, and a file:
- the parent exists once per instance whatever the number of workers, and outlives them (uvicorn
  starts a dead worker again), so nothing needs electing and no hint is lost while a worker restarts;
- a worker that starts after a bump refreshes at its start anyway, so the file holds no history to
  replay, only "something moved since you last looked";
- reading a 20-byte file 20 times a second costs each worker microseconds, and needs nothing shared
  across `spawn`ed processes but a path (uvicorn starts its workers with multiprocessing's spawn, so a
  lock or a shared-memory object would have to be rebuilt by name anyway);
- one queue per worker would multiply the subscriptions by the cores, and a worker's queue would have
  to outlive the worker's restarts under a name the worker cannot know before it starts.

The pointer poll every `poll_seconds` stays each worker's safety net for a lost message or file.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from common.adapters import sqs

LOG = logging.getLogger("arrival.serving")
# How often a worker looks at the signal file: a promotion waits for this at most, on top of the
# queue's delivery and the worker's own refresh.
SIGNAL_CHECK_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 30.0


class ReloadSignal:
    """A generation number in a file: bumped by the one process that reads the reload queue, watched
    by every worker. Written whole and renamed into place, so a reader sees the old number or the new
    one, never half a write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._generation = 0
        self._lock = threading.Lock()

    def bump(self) -> int:
        with self._lock:
            self._generation += 1
            generation = self._generation
            descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".reload-")
            try:
                with os.fdopen(descriptor, "w") as file:
                    file.write(f"{os.getpid()} {generation}\n")
                Path(temporary).replace(self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return generation

    def read(self) -> str | None:
        """The current generation as written (None before the first bump)."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None


class ReloadSignalWatch:
    """A worker's side: `changed()` says whether the signal moved since the last call."""

    def __init__(self, signal: ReloadSignal) -> None:
        self.signal = signal
        self._seen = signal.read()

    def changed(self) -> bool:
        current = self.signal.read()
        if current == self._seen:
            return False
        self._seen = current
        return True


class QueueListener:
    """Long-polls a reload queue in a thread and calls `on_hint` once per batch of messages, then
    deletes them: a message is only a hint that some pointer moved (the workers' listing says which),
    and a worker that misses one still has its poll."""

    def __init__(self, queue_url: str, on_hint: Callable[[], object], *, wait_seconds: int = 5) -> None:
        self.queue_url = queue_url
        self.on_hint = on_hint
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        # A daemon: it holds nothing, and must never keep a dying process alive.
        self._thread = threading.Thread(target=self._follow, name="reload-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _follow(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                messages = sqs.receive(self.queue_url, wait_seconds=self.wait_seconds, visibility_seconds=30)
                if messages:
                    self.on_hint()
                    for message in messages:
                        sqs.delete(self.queue_url, message["ReceiptHandle"])
                failures = 0
            except Exception:  # the thread must outlive any one failure; it backs off and retries
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * random.uniform(0.5, 1)  # noqa: S311
                LOG.exception(
                    "reload queue failed: retrying in %.1fs", delay, extra={"queue_url": self.queue_url}
                )
                self._stop.wait(delay)
