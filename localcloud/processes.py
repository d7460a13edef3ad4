"""Process and port plumbing for the supervisor: children that die with their parent, finding every
process of one local cloud, and telling whether a port is taken."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

CLOUD_ID_VARIABLE = "ARRIVAL_CLOUD_ID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel sends SIGTERM when the supervisor dies,
    even by SIGKILL, so no service outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def marked_processes(cloud_id: str) -> list[int]:
    """Every live process whose environment carries this cloud's marker, grandchildren included."""
    marker = f"{CLOUD_ID_VARIABLE}={cloud_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and is_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def cloud_processes(cloud_id: str, executable: str, environment: tuple[str, ...] = ()) -> list[int]:
    """This local cloud's processes (Linux /proc) whose command line runs ``executable`` (as its
    program or its script), and whose environment holds every ``NAME=value`` of ``environment``."""
    markers = {f"{CLOUD_ID_VARIABLE}={cloud_id}".encode(), *(variable.encode() for variable in environment)}
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(argument.endswith(executable.encode()) for argument in arguments[:2]):
                continue
            if markers <= set((proc / "environ").read_bytes().split(b"\0")):
                found.append(int(proc.name))
        except OSError:  # the process ended while we looked
            continue
    return found


def process_tree(root: int) -> list[int]:
    """The process and all its descendants, from /proc (Linux): ppid is the field after the
    parenthesised command name, which may itself hold spaces and parentheses."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def port_is_free(port: int) -> bool:
    """LocalStack binds every interface, so the port must be free on all of them."""
    if port_is_listening(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104  # the check must cover what LocalStack will bind
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


# Ports handed out by `free_port`, each held by an open lock file for the life of this process.
_reserved_ports: dict[int, IO[bytes]] = {}
# Below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default), where no
# `bind(0)` and no outgoing connection takes a port on its own, and above the well-known services.
_RESERVED_RANGE_FLOOR = 15000


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, for a service this process is about to start (tests, benchmarks).

    Asking the kernel for one (`bind(0)`) and closing it leaves a window before the service binds:
    the kernel hands the same port to the next `bind(0)` or outgoing connection of any process, and
    parallel test workers make thousands of those. So the port comes from below the ephemeral range,
    and an exclusive lock file shared by every process on the machine reserves it until this
    process exits. No library does this: portpicker needs its own port server to coordinate."""
    locks = Path(os.environ.get("TMPDIR", "/tmp")) / "arrival-ports"  # noqa: S108  # shared on purpose
    locks.mkdir(exist_ok=True)
    # (Where the ephemeral range starts lower than that, the lock files alone keep workers apart.)
    ceiling = max(_ephemeral_floor(), _RESERVED_RANGE_FLOOR + 1024)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_RESERVED_RANGE_FLOOR, ceiling)
        if port in _reserved_ports:
            continue
        lock = (locks / str(port)).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if port_is_free(port):
            _reserved_ports[port] = lock
            return port
        lock.close()
    raise RuntimeError(f"no free port between {_RESERVED_RANGE_FLOOR} and {ceiling} after 200 tries")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(pids: list[int], grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after the grace period."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(is_alive(pid) for pid in pids), grace_seconds):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(is_alive(pid) for pid in pids), 5)


@contextlib.contextmanager
def exclusive_lock(path: Path, *, blocking: bool) -> Iterator[IO[str] | None]:
    """Yields the open lock file while the lock is held, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_is_held(path: Path) -> bool:
    with exclusive_lock(path, blocking=False) as handle:
        return handle is None
