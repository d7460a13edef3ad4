"""Lambda runtime process for the arrival-process executor (one process per execution environment).

Started by path under the function's own virtualenv interpreter, so it may use the STANDARD
LIBRARY ONLY: neither localstack nor anything of the project is importable here, on purpose.

Protocol (LocalStack's side lives in ``executor_endpoint.py``):

* the handler is imported once at start (init), then ``POST $LOCALSTACK_RUNTIME_ENDPOINT/status/
  $LOCALSTACK_RUNTIME_ID/ready`` is sent, also when init failed (each invoke then answers with the
  init error, as AWS does);
* a background thread serves ``POST /invoke`` on 127.0.0.1, answers 202 at once and queues the
  invocation for the main thread, which runs the handler (asyncio adapters such as Mangum need the
  main thread's event loop);
* after each invocation the result is posted to ``/invocations/<id>/response`` or, in Lambda's
  error shape, to ``/invocations/<id>/error``.

stdout/stderr are a log file owned by the executor, which builds the CloudWatch log lines itself,
so this process only has to flush its buffers before reporting a result.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Private settings from the executor. They are removed from os.environ before user code runs so the
# function sees the same environment as on AWS (and its subprocesses don't inherit them).
_PORT_VAR = "_ARRIVAL_RUNTIME_PORT"
_LAYERS_VAR = "_ARRIVAL_LAYER_DIRS"
_RUNTIME_VAR = "_ARRIVAL_RUNTIME"

# awslambdaric's error types, reused verbatim so callers can match on them.
IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
MARSHAL_ERROR = "Runtime.MarshalError"
UNMARSHAL_ERROR = "Runtime.UnmarshalError"

_current_request_id: str = ""

# HTTP is spoken over plain sockets: http.server and urllib.request (with email, ssl, ...) cost
# ~90 ms of imports, a large part of a cold start. The peers are known (LocalStack's gateway and
# its requests-based invoke client), so a minimal HTTP/1.1 with one request per connection is
# enough. Going through sockets directly also means no HTTP(S)_PROXY of the function applies.
_MAX_HEADER_BYTES = 64 * 1024


class FaultError(Exception):
    """An error of the runtime itself (bad handler, import failure), not of the user's handler."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace or []


# ---------------------------------------------------------------------------------------------
# Process lifecycle


def _start_parent_watchdog() -> None:
    """Exit when the executor (LocalStack) goes away, even if it was SIGKILLed.

    The executor holds the write end of our stdin pipe; the kernel closes it when LocalStack dies
    for any reason, and we read EOF. (PR_SET_PDEATHSIG is no alternative: it fires when the
    spawning *thread* exits, and LocalStack spawns from short-lived threads.) The pipe is moved to
    a private, non-inheritable fd and fd 0 becomes /dev/null, so user code reading stdin cannot
    steal the EOF and subprocesses don't keep the pipe alive.
    """
    pipe_fd = os.dup(0)  # os.dup returns a non-inheritable descriptor
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    def watch() -> None:
        try:
            while os.read(pipe_fd, 4096):
                pass
        except OSError:
            pass
        # Take the whole process group (handler subprocesses included) down with us.
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="arrival-parent-watchdog", daemon=True).start()


def _flush_output() -> None:
    # User code may have replaced sys.stdout; flush both the current and the original streams so
    # every line of this invocation is in the log file before the executor reads it.
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        # A broken stream installed by user code must not take the runtime down.
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


# ---------------------------------------------------------------------------------------------
# Logging like the AWS Python runtime (root logger with a handler, request id in every line)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _current_request_id
        return True


class _JsonFormatter(logging.Formatter):
    """AWS_LAMBDA_LOG_FORMAT=JSON output (the fields the AWS runtime emits)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": getattr(record, "aws_request_id", ""),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["errorType"] = record.exc_info[0].__name__
            entry["errorMessage"] = str(record.exc_info[1])
            entry["stackTrace"] = traceback.format_tb(record.exc_info[2])
        return json.dumps(entry, default=str)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RequestIdFilter())
    if os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "CRITICAL"):
        root.setLevel({"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level))


def _log_error(error: dict[str, Any]) -> None:
    """Print an error as the AWS runtime does: ``[ERROR] Type: message`` plus the traceback."""
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error.get("stackTrace"):
        lines.append("Traceback (most recent call last):")
        lines.extend(frame.rstrip("\n") for frame in error["stackTrace"])
    sys.stderr.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Handler loading (init)


# absolute() rather than resolve(), here and in _setup_sys_path: like os.path.abspath, it does
# not follow symlinks.
_THIS_FILE = Path(__file__).absolute()


def _setup_sys_path(task_root: str, layer_dirs: list[str], runtime: str) -> None:
    """Code dir first, then the layers' python dirs, then stdlib and the venv's site-packages.

    sys.path[0] is this file's directory (the executor's package, which imports localstack): it
    must go, or a user module named like one of ours would resolve to the wrong file.
    """
    here = _THIS_FILE.parent
    sys.path[:] = [p for p in sys.path if p and Path(p).absolute() != here]
    versions = []
    for version in (runtime.replace("python", ""), f"{sys.version_info[0]}.{sys.version_info[1]}"):
        if version and version not in versions:
            versions.append(version)
    extra = [task_root]
    # Later layers overwrite earlier ones when AWS extracts them into /opt, so they come first.
    for layer in reversed(layer_dirs):
        extra.append(str(Path(layer, "python")))
        for version in versions:
            extra.append(str(Path(layer, "python", "lib", f"python{version}", "site-packages")))
    sys.path[0:0] = [p for p in extra if p not in sys.path]


_IMPORTLIB_DIR = str(Path(importlib.__file__).parent)


def _is_runtime_frame(filename: str) -> bool:
    return (
        filename == str(_THIS_FILE)
        or filename.startswith(_IMPORTLIB_DIR + os.sep)
        or filename.startswith("<frozen importlib")
    )


def _stack_trace(tb: Any) -> list[str]:
    """The traceback as AWS returns it: user frames only, without the runtime's own frames."""
    frames = [f for f in traceback.extract_tb(tb) if not _is_runtime_frame(f.filename)]
    return traceback.format_list(frames)


def _load_handler(handler: str) -> Any:
    """Import the handler like awslambdaric: ``module/path.function`` or ``module.path.function``."""
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise FaultError(MALFORMED_HANDLER_NAME, f"Bad handler '{handler}': {e}") from None
    if modname.split(".")[0] in sys.builtin_module_names:
        raise FaultError(
            BUILT_IN_MODULE_CONFLICT, f"Cannot use built-in module {modname} as a handler module"
        )
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise FaultError(
            IMPORT_MODULE_ERROR,
            f"Unable to import module '{modname}': {e}",
        ) from None
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise FaultError(USER_CODE_SYNTAX_ERROR, f"Syntax error in module '{modname}': {e}", trace) from None
    try:
        return getattr(module, fname)
    except AttributeError:
        raise FaultError(HANDLER_NOT_FOUND, f"Handler '{fname}' missing on module '{modname}'") from None


def _init() -> tuple[Any, dict[str, Any] | None]:
    """Import the handler; on failure return the Lambda error every invoke will answer with."""
    handler_name = os.environ.get("_HANDLER", "")
    try:
        return _load_handler(handler_name), None
    except FaultError as e:
        error = {"errorMessage": e.message, "errorType": e.error_type, "requestId": "", "stackTrace": e.trace}
    except Exception as e:
        # Raised by the module-level code of the user's module.
        error = {
            "errorMessage": str(e),
            "errorType": type(e).__name__,
            "requestId": "",
            "stackTrace": _stack_trace(e.__traceback__),
        }
    _log_error(error)
    return None, error


# ---------------------------------------------------------------------------------------------
# Invocation


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self) -> None:
        self.cognito_identity_id: str | None = None
        self.cognito_identity_pool_id: str | None = None


class LambdaContext:
    """The context object of the AWS Python runtime (same attribute names and types).

    ``memory_limit_in_mb`` is a str on AWS too, as it comes from the environment.
    """

    def __init__(self, request_id: str, invoked_function_arn: str, deadline_ms: int) -> None:
        self.aws_request_id = request_id
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_function_arn
        self.client_context = None
        self.identity = CognitoIdentity()
        self.tenant_id = None
        self._epoch_deadline_time_in_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(self._epoch_deadline_time_in_ms - int(time.time() * 1000), 0)

    def log(self, msg: str) -> None:
        sys.stdout.write(str(msg))

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},identity={self.identity}])"
        )


class _Encoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        # The AWS runtime serializes Decimal (e.g. from DynamoDB) as a JSON number. If the result
        # holds a Decimal, user code has imported decimal already; we don't pay for the import.
        decimal = sys.modules.get("decimal")
        if decimal is not None and isinstance(o, decimal.Decimal):
            return int(o) if o == o.to_integral_value() else float(o)
        return super().default(o)


def _read_head(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """Read up to the end of the HTTP head; return (head, start of body)."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk or len(buffer) > _MAX_HEADER_BYTES:
            raise ConnectionError("connection closed before end of HTTP head")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _header_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST and return the status code (one request per connection)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{key}: {value}" for key, value in headers.items()),
    ]
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head, _ = _read_head(conn)
    status_line = head.split(b"\r\n", 1)[0].split()
    return int(status_line[1])


def _post(path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    """POST to LocalStack's runtime endpoint; exit if LocalStack is gone for good."""
    url = f"{os.environ['LOCALSTACK_RUNTIME_ENDPOINT']}{path}"
    for attempt in range(5):
        try:
            status = _http_post(url, body, headers or {})
        except (OSError, ValueError, IndexError):
            time.sleep(0.1 * (2**attempt))
            continue
        if status >= 400:
            # e.g. 410: LocalStack no longer expects this result (the invoke timed out).
            sys.stderr.write(f"[arrival-runtime] {url} answered {status}\n")
        return
    sys.stderr.write(f"[arrival-runtime] cannot reach LocalStack at {url}; exiting\n")
    _flush_output()
    os._exit(1)


def _handle(handler: Any, init_error: dict[str, Any] | None, invocation: dict[str, Any]) -> None:
    global _current_request_id
    request_id = invocation.get("invoke-id", "")
    _current_request_id = request_id
    trace_id = invocation.get("trace-id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)

    timeout_s = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT") or 3)
    deadline_ms = int(invocation.get("deadline-ms") or (time.time() + timeout_s) * 1000)
    error: dict[str, Any] | None = None
    body = b""
    if init_error is not None:
        error = dict(init_error, requestId=request_id)
    else:
        try:
            event = json.loads(invocation.get("payload") or "null")
        except ValueError as e:
            error = {
                "errorMessage": f"Unable to unmarshal input: {e}",
                "errorType": UNMARSHAL_ERROR,
                "requestId": request_id,
                "stackTrace": [],
            }
        else:
            context = LambdaContext(request_id, invocation.get("invoked-function-arn", ""), deadline_ms)
            try:
                result = handler(event, context)
            except Exception as e:
                # Only Exception: SystemExit must end the process, as on AWS (Runtime.ExitError).
                error = {
                    "errorMessage": str(e),
                    "errorType": type(e).__name__,
                    "requestId": request_id,
                    "stackTrace": _stack_trace(e.__traceback__),
                }
            else:
                try:
                    body = json.dumps(result, cls=_Encoder, ensure_ascii=False).encode("utf-8")
                except (TypeError, ValueError, OverflowError) as e:
                    error = {
                        "errorMessage": f"Unable to marshal response: {e}",
                        "errorType": MARSHAL_ERROR,
                        "requestId": request_id,
                        "stackTrace": [],
                    }
    if error is not None:
        _log_error(error)
    _flush_output()
    if error is not None:
        _post(f"/invocations/{request_id}/error", json.dumps(error).encode("utf-8"))
    else:
        _post(f"/invocations/{request_id}/response", body)
    _current_request_id = ""


# ---------------------------------------------------------------------------------------------
# Invoke server


def _bind(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", port))
    except OSError:
        # The executor's port was taken in the meantime: take any port and report it when ready.
        server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def _respond(conn: socket.socket, status: str) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


def _serve(server: socket.socket, invocations: queue.Queue[dict[str, Any]]) -> None:
    """Accept ``POST /invoke`` and queue it for the main thread; answer 202 at once."""
    while True:
        conn, _ = server.accept()
        try:
            conn.settimeout(30)
            head, body = _read_head(conn)
            request_line = head.split(b"\r\n", 1)[0].split()
            if (
                len(request_line) < 2
                or request_line[0] != b"POST"
                or request_line[1].rstrip(b"/") != b"/invoke"
            ):
                _respond(conn, "404 Not Found")
                continue
            length = int(_header_value(head, b"content-length") or 0)
            while len(body) < length:
                chunk = conn.recv(min(1 << 20, length - len(body)))
                if not chunk:
                    raise ConnectionError("connection closed in the middle of the body")
                body += chunk
            try:
                invocation = json.loads(body or b"{}")
            except ValueError:
                _respond(conn, "400 Bad Request")
                continue
            invocations.put(invocation)
            _respond(conn, "202 Accepted")
        except (OSError, ValueError):
            # A broken connection only loses that request; the executor will time it out.
            pass
        finally:
            conn.close()


def main() -> None:
    _start_parent_watchdog()
    # Unbuffered-like output, as the AWS runtime does, so stdout and stderr interleave in order.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a TextIOWrapper; a replaced stream may lack it
            stream.reconfigure(line_buffering=True)

    port = int(os.environ.pop(_PORT_VAR, "0") or 0)
    layers = json.loads(os.environ.pop(_LAYERS_VAR, "[]") or "[]")
    runtime = os.environ.pop(_RUNTIME_VAR, "")
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or str(Path.cwd())
    sys.argv = [str(_THIS_FILE)]
    _setup_sys_path(task_root, layers, runtime)
    _setup_logging()

    invocations: queue.Queue[dict[str, Any]] = queue.Queue()
    server = _bind(port)
    threading.Thread(
        target=_serve, args=(server, invocations), name="arrival-invoke-server", daemon=True
    ).start()

    handler, init_error = _init()
    _flush_output()
    _post(
        f"/status/{os.environ['LOCALSTACK_RUNTIME_ID']}/ready",
        b"{}",
        headers={"X-Arrival-Pid": str(os.getpid()), "X-Arrival-Port": str(server.getsockname()[1])},
    )
    while True:
        _handle(handler, init_error, invocations.get())


if __name__ == "__main__":
    main()
