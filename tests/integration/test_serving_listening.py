"""The server takes the socket its service manager hands over, and stops without failing a request
(serving/listening.py): real uvicorn, on a socket the test holds as systemd would."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from serving.listening import DRAIN_SECONDS, DrainingServer, inherited_socket
from tests.helpers import eventually


def test_a_socket_handed_to_this_process_is_taken_and_its_variables_removed() -> None:
    held = socket.create_server(("127.0.0.1", 0))
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "api", "OTHER": "x"}
    taken = inherited_socket(environ, first_fd=os.dup(held.fileno()))
    assert taken is not None
    assert taken.getsockname() == held.getsockname()
    assert taken.type == socket.SOCK_STREAM
    assert environ == {"OTHER": "x"}  # no child of the server takes it for its own
    taken.close()
    held.close()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1", "LISTEN_PID": "1"},  # for another process (a parent's)
        {"LISTEN_FDS": "0", "LISTEN_PID": "{pid}"},
        {"LISTEN_FDS": "1"},  # no owner named: sd_listen_fds(3) takes nothing either
    ],
)
def test_no_socket_is_taken_unless_handed_to_this_very_process(environ: dict[str, str]) -> None:
    environ = {name: value.format(pid=os.getpid()) for name, value in environ.items()}
    assert inherited_socket(environ, first_fd=-1) is None
    assert "LISTEN_FDS" not in environ and "LISTEN_PID" not in environ


def test_more_than_one_socket_is_refused_by_count() -> None:
    with pytest.raises(ValueError, match="passed 2"):
        inherited_socket({"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid())}, first_fd=-1)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _Running:
    """A DrainingServer in a thread, on its own handle of a socket the test keeps open, as systemd
    keeps the API port's."""

    def __init__(self) -> None:
        self.held = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.held.getsockname()[1]
        config = uvicorn.Config(_ok, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
        self.server = DrainingServer(config)
        handle = socket.socket(fileno=os.dup(self.held.fileno()))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [handle]}, daemon=True)
        self.thread.start()
        eventually(lambda: self.server.started, 10, 0.01, what="the server started")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)


@pytest.fixture
def running() -> Iterator[_Running]:
    server = _Running()
    yield server
    server.server.should_exit = True
    server.thread.join(10)
    server.held.close()


def _get(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    return response


def test_a_draining_server_answers_a_kept_alive_connection_once_more_and_tells_it_to_close(
    running: _Running,
) -> None:
    # GIVEN a client on a kept-alive connection, idle between two requests
    client = running.connection()
    first = _get(client)
    assert first.status == 200 and first.getheader("connection") is None

    # WHEN the server is told to stop
    running.server.should_exit = True
    eventually(lambda: running.server.draining, 5, 0.01, what="the drain")

    # THEN the next request on that connection is answered, not cut (uvicorn alone would have closed
    # the idle connection at once), and the answer tells the client to close it
    second = _get(client)
    assert second.status == 200
    assert second.getheader("connection") == "close"
    # and the server then ends well within its drain, as its last connection is gone
    running.thread.join(DRAIN_SECONDS + 5)
    assert not running.thread.is_alive()


def test_a_draining_server_leaves_new_connections_to_the_next_server(running: _Running) -> None:
    # GIVEN a server told to stop, draining while a client keeps its connection open
    idle = running.connection()
    assert _get(idle).status == 200
    running.server.should_exit = True
    eventually(lambda: running.server.draining, 5, 0.01, what="the drain")

    # WHEN a new client connects meanwhile, and sends its request
    newcomer = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    newcomer.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    # (the server ends at the end of its drain: the idle connection holds it that long)
    running.thread.join(DRAIN_SECONDS + 5)
    assert not running.thread.is_alive()

    # THEN the draining server did not take it (it would have answered and closed it): the request
    # waits in the socket's backlog, unread, for the next server (here the test, holding the socket
    # as systemd does)
    running.held.settimeout(5)
    accepted, _ = running.held.accept()
    assert accepted.getpeername() == newcomer.getsockname()
    assert accepted.recv(1024).startswith(b"GET / HTTP/1.1")
    accepted.close()
    newcomer.close()
    # and the connection left idle through the drain was closed at its end
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        _get(idle)
