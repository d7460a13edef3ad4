"""The server's listening socket, and how a server stops without failing a request.

**The socket outlives the server.** On EC2 the instance's systemd holds the API port
(`arrival-server.socket`, deploy/arrival-boot.sh) and hands it to `arrival-serve` at every start,
as the local cloud's instance agent does. So while the server restarts, after a crash or for a new
release, connections wait in the socket's backlog instead of being refused, and the new server
answers them. Without a socket handed over (a developer's machine, a container), the server binds
the port itself.

**A stopping server drains** (`DrainingServer`). uvicorn's own shutdown closes every idle
keep-alive connection at once, and a client whose next request was already on its way gets no
answer: under load, some request always is. Instead, each worker:
1. stops accepting, while the socket stays open for the next server (the backlog holds what arrives
   meanwhile);
2. for up to `DRAIN_SECONDS`, answers every request with `Connection: close`, so each client ends
   the connection itself, after a complete response, and opens a new one on the next server;
3. then shuts down as uvicorn does: the requests in flight finish, and a connection left idle all
   along is closed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import MutableMapping
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

LOG = logging.getLogger("arrival.serving")

# systemd's socket-passing protocol (sd_listen_fds(3)): the first passed descriptor is 3, the count
# is in LISTEN_FDS, and LISTEN_PID names the process they are for (a child must not take them).
# Written here rather than taken from systemd-python, which needs libsystemd's headers to build,
# for three lines of environment reading.
SD_LISTEN_FDS_START = 3
# Long enough for every busy keep-alive connection to send one more request and be told to close
# (a prediction takes milliseconds); short enough to fit the stop budget (serving/shutdown.py).
DRAIN_SECONDS = 1.0
_DRAIN_CHECK_SECONDS = 0.02
# How soon a dead worker is started again.
_WORKER_CHECK_SECONDS = 0.5


def inherited_socket(
    environ: MutableMapping[str, str] | None = None,
    pid: int | None = None,
    first_fd: int = SD_LISTEN_FDS_START,
) -> socket.socket | None:
    """The listening socket the instance's service manager handed over, if it handed one to this
    process; the variables naming it are removed, so that no child takes it for its own."""
    environ = os.environ if environ is None else environ
    count, owner = environ.get("LISTEN_FDS", ""), environ.get("LISTEN_PID", "")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not count.isdigit() or int(count) < 1 or owner != str(os.getpid() if pid is None else pid):
        return None
    if int(count) > 1:
        raise ValueError(f"arrival-serve listens on one socket; the service manager passed {count}")
    listener = socket.socket(fileno=first_fd)  # family and type read from the descriptor itself
    if listener.type != socket.SOCK_STREAM:
        raise ValueError("the socket handed to arrival-serve is not a stream socket")
    listener.set_inheritable(False)
    return listener


class _CloseWhenDraining:
    """The app, answering `Connection: close` once its server drains (uvicorn then closes the
    connection after the response). One attribute read per request otherwise."""

    def __init__(self, app: Any, server: DrainingServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.server.draining:
            await self.app(scope, receive, send)
            return

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before it shuts down (this module's docstring says why and how)."""

    draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.loaded_app = _CloseWhenDraining(self.config.loaded_app, self)
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Only this process's handle on the socket closes: the service manager's stays open.
        for server in self.servers:
            server.close()
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_SECONDS
        while self.server_state.connections and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(_DRAIN_CHECK_SECONDS)
        await super().shutdown(sockets=sockets)


def run_workers(config: uvicorn.Config, listener: socket.socket | None) -> None:
    """What `uvicorn.run` does with `workers`, on the handed-over socket if there is one, with
    `DrainingServer` in every worker."""
    if listener is None:
        listener = config.bind_socket()
    if config.workers > 1:
        _supervise(config, listener)
    else:
        DrainingServer(config).run(sockets=[listener])


def _worker(config: uvicorn.Config, listener: socket.socket) -> None:
    config.configure_logging()  # a spawned process starts with none
    DrainingServer(config).run(sockets=[listener])


def _supervise(config: uvicorn.Config, listener: socket.socket) -> None:
    """`config.workers` processes serving on `listener`, each started again if it dies, all told to
    stop (and so to drain) on SIGTERM or SIGINT. Written here rather than taken from uvicorn's
    `Multiprocess`, which builds each worker's server itself and has no way to make it a
    DrainingServer."""
    spawn = multiprocessing.get_context("spawn")  # what uvicorn does: no state forked from here
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopping.set())

    def start() -> BaseProcess:
        process = spawn.Process(target=_worker, args=(config, listener), name="arrival-serve-worker")
        process.start()
        return process

    workers = [start() for _ in range(config.workers)]
    LOG.info("started %d workers: %s", len(workers), [worker.pid for worker in workers])
    while not stopping.wait(_WORKER_CHECK_SECONDS):
        for index, worker in enumerate(workers):
            if not worker.is_alive():
                LOG.warning("worker %s ended (%s): starting another", worker.pid, worker.exitcode)
                workers[index] = start()
    for worker in workers:
        worker.terminate()  # SIGTERM: each drains, then shuts down (serving/shutdown.py's budget)
    for worker in workers:
        worker.join()
