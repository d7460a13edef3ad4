"""A LocalStack ``RuntimeExecutor`` that runs Python Lambda functions as local OS processes.

One execution environment (one instance of :class:`ProcessRuntimeExecutor`) is one process running
``bootstrap.py`` under the function's dependency virtualenv. Everything Lambda enforces from
*outside* the function is enforced here, outside the process, so it also works when the handler is
stuck in C code: the timeout, the memory limit, crash detection, and the CloudWatch log lines
(START/END/REPORT) which are built from the process's captured stdout/stderr.

This module runs inside LocalStack and may import it; ``bootstrap.py`` may not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from http import HTTPStatus
from pathlib import Path

import requests
from localstack import config
from localstack.aws.api.lambda_ import PackageType
from localstack.http import Response
from localstack.services.lambda_.invocation.executor_endpoint import (
    ExecutorEndpoint,
    ShutdownDuringStartup,
    StatusErrorException,
)
from localstack.services.lambda_.invocation.lambda_models import FunctionVersion, InvocationResult
from localstack.services.lambda_.invocation.runtime_executor import (
    LambdaRuntimeException,
    RuntimeExecutor,
)
from localstack.utils.net import get_free_tcp_port
from werkzeug import Request

from arrival_lambda_executor import venvs

LOG = logging.getLogger(__name__)

BOOTSTRAP_PATH = Path(__file__).resolve().with_name("bootstrap.py")

# How often a running invocation is checked for a result, a dead process, memory and the deadline.
POLL_INTERVAL_S = 0.025
# stop(): time between SIGTERM and SIGKILL.
STOP_GRACE_S = 2.0
# An invocation's output beyond this is cut (from the front) before it goes to CloudWatch.
MAX_LOG_BYTES_PER_INVOKE = 4 * 1024 * 1024
# The per-environment output file is emptied between invocations once it is this large.
LOG_ROTATE_BYTES = 64 * 1024 * 1024
# get_logs() (used by LocalStack for startup-failure diagnostics) returns at most this much.
GET_LOGS_TAIL_BYTES = 64 * 1024

# Environment variables read by the bootstrap (and removed before user code runs).
ENV_RUNTIME_PORT = "_ARRIVAL_RUNTIME_PORT"
ENV_LAYER_DIRS = "_ARRIVAL_LAYER_DIRS"
ENV_RUNTIME = "_ARRIVAL_RUNTIME"
# Copied from LocalStack's own environment into every child, so that all processes of one local
# cloud can be found through /proc/<pid>/environ.
ENV_CLOUD_ID = "ARRIVAL_CLOUD_ID"
# LocalStack assumes a function's role once, when an environment starts, for 12 hours, and keeps a
# busy environment alive for ever (it stops only idle ones): with IAM enforced, a reconciler invoked
# every minute would call AWS with an expired session after 12 hours. Lambda recycles environments
# long before its credentials expire; here an environment this old assumes its role again and
# restarts its process before the next invocation (a fresh sandbox, with a cold start, as Lambda's).
RENEW_ROLE_SESSION_AFTER_S = float(os.environ.get("ARRIVAL_LAMBDA_SESSION_RENEW_SECONDS", 6 * 3600))


def venv_cache_dir() -> Path:
    """``$ARRIVAL_LAMBDA_VENV_CACHE``, else a dir in LocalStack's cache.

    Not ``config.dirs.tmp``: LocalStack empties that on every start (CLEAR_TMP_FOLDER), which would
    rebuild every virtualenv on every restart.
    """
    configured = os.environ.get("ARRIVAL_LAMBDA_VENV_CACHE")
    if configured:
        return Path(configured)
    cache = Path(config.dirs.cache) / "arrival-lambda-venvs"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    # e.g. /var/lib/localstack not writable for a non-root user: a per-run cache still works.
    return Path(config.dirs.tmp) / "arrival-lambda-venvs"


def _output_dir() -> Path:
    return Path(config.dirs.tmp) / "arrival-lambda-output"


@dataclasses.dataclass(frozen=True)
class PreparedVersion:
    """Everything needed to start a process for a function version."""

    runtime: str
    interpreter: venvs.Interpreter
    venv: Path
    code_dir: Path
    layer_dirs: list[Path]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def prepare(function_version: FunctionVersion) -> PreparedVersion:
    """Unpack code and layers and make sure the dependency venv exists (idempotent, cheap if done)."""
    fn_config = function_version.config
    if fn_config.package_type != PackageType.Zip or fn_config.code is None:
        raise LambdaRuntimeException("The arrival-process Lambda executor only runs zip-packaged functions")
    runtime = str(fn_config.runtime or "")
    try:
        venvs.parse_runtime(runtime)
    except ValueError:
        raise LambdaRuntimeException(
            f"The arrival-process Lambda executor only runs Python runtimes, not {runtime!r}"
        ) from None

    fn_config.code.prepare_for_execution()
    layer_dirs = []
    for layer in fn_config.layers:
        if layer.code is None:
            continue
        layer.code.prepare_for_execution()
        layer_dirs.append(Path(layer.code.get_unzipped_code_location()))
    code_dir = Path(fn_config.code.get_unzipped_code_location())

    uv = venvs.find_uv()
    interpreter = venvs.find_interpreter(runtime, uv=uv)
    venv = venvs.ensure_venv(
        interpreter,
        venvs.requirement_files(code_dir, layer_dirs),
        venv_cache_dir(),
        uv,
        label=function_version.qualified_arn,
    )
    return PreparedVersion(runtime, interpreter, venv, code_dir, layer_dirs)


def _exit_description(returncode: int) -> str:
    """Describe an exit like Lambda's Go init does ("exit status 1", "signal: killed")."""
    if returncode == 0:
        return "Runtime exited without providing a reason"
    if returncode > 0:
        return f"Runtime exited with error: exit status {returncode}"
    try:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
    except ValueError:
        name = f"signal {-returncode}"
    return f"Runtime exited with error: signal: {name.lower()}"


def _read_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a process, in kB (None once the process is gone)."""
    try:
        with Path(f"/proc/{pid}/status").open("rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The child is a session (and process group) leader, so its pid is the group id; signalling
    # the group also reaches subprocesses the handler started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class ProcessExecutorEndpoint(ExecutorEndpoint):
    """LocalStack's executor endpoint, hardened for processes that can be killed and restarted.

    A result or ready report that belongs to an earlier process or invocation (e.g. one that timed
    out) is answered with 410/409 instead of raising on an already completed future.
    """

    expected_pid: int | None
    current_request_id: str | None

    def __init__(self, executor_id: str) -> None:
        super().__init__(executor_id, container_address="127.0.0.1", container_port=None)
        self.expected_pid = None
        self.current_request_id = None

    def status_ready(self, request: Request, executor_id: str) -> Response:
        pid = request.headers.get("X-Arrival-Pid")
        if pid and self.expected_pid is not None and pid != str(self.expected_pid):
            return Response(status=HTTPStatus.CONFLICT)
        port = request.headers.get("X-Arrival-Port")
        if port:
            # The bootstrap binds another port if ours was taken meanwhile; use what it reports.
            self.container_port = int(port)
        future = self.startup_future
        if future is not None:
            with contextlib.suppress(InvalidStateError):
                future.set_result(True)
        return Response(status=HTTPStatus.ACCEPTED)

    def invocation_response(self, request: Request, req_id: str) -> Response:
        return self._complete(request, req_id, is_error=False)

    def invocation_error(self, request: Request, req_id: str) -> Response:
        return self._complete(request, req_id, is_error=True)

    def _complete(self, request: Request, req_id: str, is_error: bool) -> Response:
        future = self.invocation_future
        if future is None or req_id != self.current_request_id:
            LOG.debug("Ignoring late result for request %s on executor %s", req_id, self.executor_id)
            return Response(status=HTTPStatus.GONE)
        try:
            future.set_result(InvocationResult(req_id, request.data, is_error=is_error, logs=None))
        except InvalidStateError:
            return Response(status=HTTPStatus.GONE)
        return Response(status=HTTPStatus.ACCEPTED)


class ProcessRuntimeExecutor(RuntimeExecutor):
    """Runs one Lambda execution environment as a local process (see module docstring)."""

    executor_endpoint: ProcessExecutorEndpoint

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        self.executor_endpoint = ProcessExecutorEndpoint(self.id)
        # Guards the process handle: stop() may run in another thread while invoke() waits.
        self._lock = threading.RLock()
        # LocalStack sends one invocation at a time per environment; be defensive anyway.
        self._invoke_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._env_vars: dict[str, str] = {}
        self._prepared: PreparedVersion | None = None
        self._output_path = _output_dir() / f"{self.id}.log"
        # Start of the output not yet attached to an invocation's logs.
        self._reported_offset = 0
        # Set after a (re)start; reported once, in the REPORT line of the next invocation.
        self._pending_init_ms: float | None = None
        self._peak_kb = 0
        self._session_started = time.monotonic()

    # -- RuntimeExecutor interface ------------------------------------------------------------

    def start(self, env_vars: dict[str, str]) -> None:
        self.executor_endpoint.start()
        # LocalStack passes some values as ints (memory size, timeout); the OS needs strings.
        self._env_vars = {k: str(v) for k, v in env_vars.items() if v is not None}
        self._prepared = prepare(self.function_version)
        self._spawn_and_wait_ready()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            proc = self._proc
        if proc is not None:
            self._terminate(proc, graceful=True)
            LOG.debug("Stopped runtime process %d of executor %s (%s)", proc.pid, self.id, proc.returncode)
        try:
            self.executor_endpoint.shutdown()
        except Exception as e:
            LOG.debug("Error while shutting down executor endpoint %s: %s", self.id, e)
        try:
            self._output_path.unlink(missing_ok=True)
        except OSError as e:
            LOG.debug("Could not remove output file %s: %s", self._output_path, e)

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        return "127.0.0.1"

    def get_runtime_endpoint(self) -> str:
        return (
            f"http://127.0.0.1:{config.GATEWAY_LISTEN[0].port}{self.executor_endpoint.get_endpoint_prefix()}"
        )

    def get_logs(self) -> str:
        try:
            size = self._output_path.stat().st_size
            return self._read_output(max(0, size - GET_LOGS_TAIL_BYTES), size)
        except OSError:
            return "No output: the runtime process was never started"

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        # Done here so that creating/updating a function builds its venv, not its first invoke.
        prepared = prepare(function_version)
        LOG.debug(
            "Prepared %s: Python %s, venv %s",
            function_version.qualified_arn,
            prepared.interpreter.full_version,
            prepared.venv,
        )

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        # Venvs are content-addressed and shared between versions; they stay cached.
        pass

    @classmethod
    def validate_environment(cls) -> bool:
        return True

    def invoke(self, payload: dict[str, str]) -> InvocationResult:
        request_id = payload["invoke-id"]
        with self._invoke_lock:
            if time.monotonic() - self._session_started > RENEW_ROLE_SESSION_AFTER_S:
                self._renew_role_session()
            if not self._is_running():
                # The previous process timed out, ran out of memory or crashed: re-init, as Lambda
                # does in a fresh sandbox.
                if self._stopped:
                    raise LambdaRuntimeException(f"Execution environment {self.id} was stopped")
                try:
                    self._spawn_and_wait_ready()
                except StatusErrorException as e:
                    return self._failed_restart_result(request_id, e)
            return self._invoke_running(payload, request_id)

    # -- process management -------------------------------------------------------------------

    def _is_running(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def _child_env(self, port: int) -> dict[str, str]:
        """Exactly LocalStack's variables for the function plus what a process needs to run.

        Nothing else of LocalStack's environment is passed on: no PYTHONPATH, no VIRTUAL_ENV, no
        LocalStack settings, so the function sees only its own packages.
        """
        prepared = self._prepared
        assert prepared is not None
        own_bin = Path(sys.prefix) / "bin"
        host_path = [
            p
            for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
            # LocalStack's own venv must not provide `python` to the function's subprocesses.
            # absolute(), not resolve(): like os.path.abspath, it does not follow symlinks.
            if p and not (sys.prefix != sys.base_prefix and Path(p).absolute() == own_bin)
        ]
        path = [str(prepared.venv / "bin"), *(str(d / "bin") for d in reversed(prepared.layer_dirs))]
        env: dict[str, str] = {
            "PATH": os.pathsep.join(path + host_path),
            "LANG": os.environ.get("LANG") or "C.UTF-8",
        }
        if os.environ.get("HOME"):
            env["HOME"] = os.environ["HOME"]
        env.update(self._env_vars)
        # Set by the runtime itself on AWS.
        env["LAMBDA_TASK_ROOT"] = str(prepared.code_dir)
        env["LAMBDA_RUNTIME_DIR"] = str(BOOTSTRAP_PATH.parent)
        if env.get("AWS_EXECUTION_ENV", "AWS_Lambda_rapid") == "AWS_Lambda_rapid":
            env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{prepared.runtime}"
        if prepared.layer_dirs:
            lib_dirs = [str(d / "lib") for d in reversed(prepared.layer_dirs)]
            if env.get("LD_LIBRARY_PATH"):
                lib_dirs.append(env["LD_LIBRARY_PATH"])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
        if os.environ.get(ENV_CLOUD_ID):
            env[ENV_CLOUD_ID] = os.environ[ENV_CLOUD_ID]
        env[ENV_RUNTIME_PORT] = str(port)
        env[ENV_LAYER_DIRS] = json.dumps([str(d) for d in prepared.layer_dirs])
        env[ENV_RUNTIME] = prepared.runtime
        return env

    def _spawn_and_wait_ready(self) -> None:
        """Start the runtime process and block until it reported ready (init done).

        Raises StatusErrorException (LocalStack turns it into an error result) if the process dies
        or does not get ready in time, ShutdownDuringStartup if stop() interrupts the start.
        """
        prepared = self._prepared
        assert prepared is not None
        endpoint = self.executor_endpoint
        with self._lock:
            if self._stopped:
                raise ShutdownDuringStartup(f"Execution environment {self.id} was stopped")
            port = get_free_tcp_port()
            env = self._child_env(port)
            self._output_path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: the file can be truncated between invocations without the child writing
            # at its old offset and leaving a hole.
            output_fd = os.open(self._output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                self._reported_offset = os.fstat(output_fd).st_size
                startup_future: Future[bool] = Future()
                endpoint.startup_future = startup_future
                endpoint.container_port = port
                # Accept the ready report of whichever process comes now; pinned to its pid below.
                endpoint.expected_pid = None
                started = time.monotonic()
                proc = subprocess.Popen(
                    [str(prepared.python), str(BOOTSTRAP_PATH)],
                    # The pipe is the child's lifeline: it reads EOF when LocalStack dies, even by
                    # SIGKILL, and then exits (see bootstrap._start_parent_watchdog).
                    stdin=subprocess.PIPE,
                    # fd-level redirection captures C extensions and subprocesses too.
                    stdout=output_fd,
                    stderr=output_fd,
                    cwd=prepared.code_dir,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(output_fd)
            endpoint.expected_pid = proc.pid
            self._proc = proc
            self._peak_kb = 0
        LOG.debug(
            "Started runtime process %d for %s (executor %s, Python %s)",
            proc.pid,
            self.function_version.qualified_arn,
            self.id,
            prepared.interpreter.full_version,
        )

        # LocalStack's startup timer stops us first on the initial start; this one covers restarts.
        deadline = started + config.LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT + 1
        while True:
            try:
                startup_future.result(timeout=POLL_INTERVAL_S)
                break
            except FutureTimeoutError:
                pass
            except CancelledError as e:
                raise ShutdownDuringStartup(
                    f"Execution environment {self.id} was stopped during startup"
                ) from e
            returncode = proc.poll()
            if returncode is not None:
                message = _exit_description(returncode)
                LOG.warning(
                    "Runtime process of %s exited during init (%s). Output:\n%s",
                    self.function_version.qualified_arn,
                    message,
                    self.get_logs(),
                )
                raise StatusErrorException(
                    "Environment startup failed",
                    payload=json.dumps(
                        {"errorType": "Runtime.ExitError", "errorMessage": f"Error: {message}"}
                    ).encode(),
                )
            if time.monotonic() > deadline:
                self._terminate(proc, graceful=False)
                raise StatusErrorException(
                    "Environment startup timed out",
                    payload=json.dumps(
                        {
                            "errorType": "Runtime.Unknown",
                            "errorMessage": "Error: runtime did not get ready within "
                            f"{config.LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT} seconds",
                        }
                    ).encode(),
                )
        self._pending_init_ms = (time.monotonic() - started) * 1000
        LOG.debug("Runtime process %d ready after %.1f ms", proc.pid, self._pending_init_ms)

    def _renew_role_session(self) -> None:
        """A new session of the function's role, as LocalStack's environment makes one at its start,
        and the process restarted with it (see RENEW_ROLE_SESSION_AFTER_S)."""
        from localstack.aws.connect import connect_to

        function = self.function_version
        sts = connect_to(region_name=function.id.region).sts.request_metadata(service_principal="lambda")
        credentials = sts.assume_role(
            RoleArn=function.config.role,
            RoleSessionName=function.id.function_name.ljust(2, "@"),
            DurationSeconds=43200,
        )["Credentials"]
        self._env_vars.update(
            AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
            AWS_SESSION_TOKEN=credentials["SessionToken"],
        )
        self._session_started = time.monotonic()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            LOG.info("Environment %s renews its role session: restarting its process", self.id)
            self._terminate(proc, graceful=True)

    def _terminate(self, proc: subprocess.Popen[bytes], graceful: bool) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after STOP_GRACE_S (or SIGKILL at once)."""
        if graceful:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
        # Always also SIGKILL the group: handler subprocesses may outlive the main process.
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            LOG.warning("Runtime process %d did not exit after SIGKILL", proc.pid)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _sample_memory(self, pid: int) -> None:
        hwm = _read_hwm_kb(pid)
        if hwm is not None and hwm > self._peak_kb:
            self._peak_kb = hwm

    # -- invocation ---------------------------------------------------------------------------

    def _invoke_running(self, payload: dict[str, str], request_id: str) -> InvocationResult:
        proc = self._proc
        assert proc is not None
        endpoint = self.executor_endpoint
        timeout_s = float(self.function_version.config.timeout)
        memory_mb = int(self.function_version.config.memory_size)
        init_ms, self._pending_init_ms = self._pending_init_ms, None

        send_offset = self._output_size()
        future: Future[InvocationResult] = Future()
        endpoint.invocation_future = future
        endpoint.current_request_id = request_id
        started = time.monotonic()
        # None: the runtime answered; else "timeout", "oom", "exit" or "send".
        outcome = self._send_invocation(payload, timeout_s)
        result: InvocationResult | None = None
        try:
            if outcome is None:
                result, outcome = self._await_result(proc, future, started + timeout_s, memory_mb)
        finally:
            endpoint.current_request_id = None
        duration_ms = (time.monotonic() - started) * 1000

        if outcome is None:
            self._sample_memory(proc.pid)
            # A spike between two samples still counts: Lambda's cgroup would have killed it.
            if self._over_memory(memory_mb):
                outcome = "oom"
        extra_lines: list[str] = []
        status = ""
        if outcome is not None:
            # The environment is reset: the next invoke starts a fresh process.
            self._terminate(proc, graceful=False)
            result, extra_lines, status = self._failure(outcome, request_id, timeout_s, proc.returncode)
        assert result is not None

        report = self._report_line(request_id, duration_ms, memory_mb, init_ms)
        result.logs = self._build_logs(
            request_id, send_offset, init_ms is not None, extra_lines, report + status
        )
        if outcome is not None:
            LOG.info(
                "Invocation %s of %s failed: %s",
                request_id,
                self.function_version.qualified_arn,
                result.payload.decode(errors="replace") if result.payload else outcome,
            )
        return result

    def _send_invocation(self, payload: dict[str, str], timeout_s: float) -> str | None:
        """POST the invocation to the runtime process; "send" if it refused it, else None."""
        body: dict[str, str | int] = dict(payload)
        # The deadline the context reports must be the one enforced here.
        body["deadline-ms"] = int((time.time() + timeout_s) * 1000)
        try:
            # One attempt, no retries: the process is known to listen, and a failure after the
            # body went out (e.g. the handler crashed the process before the 202 was written)
            # may mean it was delivered; retrying could run it twice. _await_result sorts out
            # what happened (result, exit or timeout).
            response = requests.post(
                f"http://127.0.0.1:{self.executor_endpoint.container_port}/invoke",
                json=body,
                proxies={"http": "", "https": ""},
                timeout=(5, 10),
            )
        except requests.exceptions.RequestException as e:
            LOG.debug("Sending invoke to runtime of executor %s failed: %s", self.id, e)
            return None
        if not response.ok:
            LOG.warning("Runtime of executor %s refused invoke: %s", self.id, response.status_code)
            return "send"
        return None

    def _await_result(
        self,
        proc: subprocess.Popen[bytes],
        future: Future[InvocationResult],
        deadline: float,
        memory_mb: int,
    ) -> tuple[InvocationResult | None, str | None]:
        """Wait for the runtime's answer: (result, None), or (None, "oom" / "exit" / "timeout")."""
        while True:
            with contextlib.suppress(FutureTimeoutError):
                return future.result(timeout=POLL_INTERVAL_S), None
            self._sample_memory(proc.pid)
            if self._over_memory(memory_mb):
                return None, "oom"
            if proc.poll() is not None:
                # A result posted just before the exit is still a result.
                try:
                    return future.result(timeout=0.2), None
                except FutureTimeoutError:
                    return None, "exit"
            if time.monotonic() >= deadline:
                return None, "timeout"

    def _over_memory(self, memory_mb: int) -> bool:
        return self._peak_kb > memory_mb * 1024

    def _failure(
        self, outcome: str, request_id: str, timeout_s: float, returncode: int | None
    ) -> tuple[InvocationResult, list[str], str]:
        """Error result, extra log lines and REPORT status suffix of a failed invocation."""
        if outcome == "timeout":
            message = f"Task timed out after {timeout_s:.2f} seconds"
            now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            log_line = f"{now}.{int(time.time() * 1000) % 1000:03d}Z {request_id} {message}"
            result = self._error_result(
                request_id, "Sandbox.Timedout", f"RequestId: {request_id} Error: {message}"
            )
            return result, [log_line], "\tStatus: timeout"
        if outcome == "oom":
            error_type, message = "Runtime.OutOfMemory", _exit_description(-signal.SIGKILL)
        elif outcome == "exit":
            assert returncode is not None
            error_type, message = "Runtime.ExitError", _exit_description(returncode)
        else:
            error_type, message = "Runtime.Unknown", "Runtime failed to accept the invocation"
        result = self._error_result(request_id, error_type, f"RequestId: {request_id} Error: {message}")
        extra_lines = [f"RequestId: {request_id} Error: {message}", error_type]
        return result, extra_lines, f"\tStatus: error\tError Type: {error_type}"

    def _report_line(self, request_id: str, duration_ms: float, memory_mb: int, init_ms: float | None) -> str:
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms"
            f"\tBilled Duration: {math.ceil(duration_ms)} ms\tMemory Size: {memory_mb} MB"
            f"\tMax Memory Used: {math.ceil(self._peak_kb / 1024)} MB"
        )
        if init_ms is not None:
            report += f"\tInit Duration: {init_ms:.2f} ms"
        return report

    @staticmethod
    def _error_result(request_id: str, error_type: str, message: str) -> InvocationResult:
        payload = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
        return InvocationResult(request_id, payload, is_error=True, logs=None)

    def _failed_restart_result(self, request_id: str, error: StatusErrorException) -> InvocationResult:
        try:
            details = json.loads(error.payload)
            message = f"RequestId: {request_id} {details.get('errorMessage', '')}".strip()
            error_type = details.get("errorType", "Runtime.Unknown")
        except ValueError:
            error_type, message = "Runtime.Unknown", f"RequestId: {request_id} Error: {error}"
        result = self._error_result(request_id, error_type, message)
        output = self._read_output(self._reported_offset, self._output_size())
        self._reported_offset = self._output_size()
        result.logs = f"{output.rstrip()}\n{message}\n{error_type}\n".lstrip()
        return result

    # -- output / logs ------------------------------------------------------------------------

    def _output_size(self) -> int:
        try:
            return self._output_path.stat().st_size
        except OSError:
            return 0

    def _read_output(self, start: int, end: int) -> str:
        if end <= start:
            return ""
        skipped = 0
        if end - start > MAX_LOG_BYTES_PER_INVOKE:
            skipped = end - start - MAX_LOG_BYTES_PER_INVOKE
            start = end - MAX_LOG_BYTES_PER_INVOKE
        try:
            with self._output_path.open("rb") as output:
                output.seek(start)
                data = output.read(end - start)
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        if skipped:
            text = f"[arrival-process: {skipped} bytes of output omitted]\n{text}"
        return text

    def _build_logs(
        self,
        request_id: str,
        send_offset: int,
        cold_start: bool,
        extra_lines: list[str],
        report: str,
    ) -> str:
        """Lambda-style logs: [INIT_START + init output], START, output, END, REPORT."""
        end = self._output_size()
        before = self._read_output(self._reported_offset, send_offset)
        during = self._read_output(send_offset, end)
        self._reported_offset = end

        lines: list[str] = []
        if cold_start and self._prepared is not None:
            interpreter = self._prepared.interpreter
            lines.append(
                f"INIT_START Runtime Version: python:{interpreter.full_version}"
                f"\tInterpreter: {interpreter.path}"
            )
        if before:
            lines.append(before.rstrip("\n"))
        lines.append(f"START RequestId: {request_id} Version: {self.function_version.id.qualifier}")
        if during:
            lines.append(during.rstrip("\n"))
        lines.extend(extra_lines)
        lines.append(f"END RequestId: {request_id}")
        lines.append(report)

        if end > LOG_ROTATE_BYTES and self._is_running():
            # Between invocations only background threads can write; losing a line in this window
            # is the price of not growing the file forever.
            try:
                os.truncate(self._output_path, 0)
                self._reported_offset = 0
            except OSError as e:
                LOG.debug("Could not truncate %s: %s", self._output_path, e)
        return "\n".join(lines) + "\n"
