"""`free_port`: ports for the services tests and benchmarks start, safe from parallel workers."""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path

import pytest

from localcloud import processes

pytestmark = pytest.mark.integration


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    ports = [processes.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(15000 <= port < processes._ephemeral_floor() for port in ports)


def test_a_port_another_process_reserved_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a port whose lock file another process holds (a second open file is another holder)
    taken, free = 23456, 23457
    locks = Path(os.environ.get("TMPDIR", "/tmp")) / "arrival-ports"
    locks.mkdir(exist_ok=True)
    monkeypatch.setattr(processes, "_reserved_ports", {})
    picks = iter([taken, free])
    monkeypatch.setattr(random.SystemRandom, "randrange", lambda _self, _low, _high: next(picks))
    with (locks / str(taken)).open("ab") as holder:
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip(f"port {taken} is reserved by another run on this machine")
        # WHEN a port is asked for THEN the reserved one is passed over
        assert processes.free_port() == free
