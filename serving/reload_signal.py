"""The reload signal: how `arrival-serve`'s supervisor tells its worker processes that some pointer
moved (why a file, and why the supervisor: serving/reload.py)."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

# How often a worker looks at the signal file: a promotion waits for this at most, on top of the
# queue's delivery and the worker's own refresh.
SIGNAL_CHECK_SECONDS = 0.05


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
