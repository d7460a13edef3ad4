"""The one detached process that owns every local service of a local cloud.

``arrival up`` starts it; it holds ``supervisor.lock`` for its whole life, so a second one can never
start on the same state directory. Its children get PR_SET_PDEATHSIG, so killing it (even with
SIGKILL) takes them down too; a clean stop (SIGTERM) stops them in reverse order and waits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from localcloud import emulator, instance_agent, tracking_server
from localcloud.emulator import Service
from localcloud.processes import (
    CLOUD_ID_VARIABLE,
    die_with_parent,
    exclusive_lock,
    is_alive,
    marked_processes,
    terminate,
)
from localcloud.settings import LocalCloudSettings, get_local_cloud_settings

LOG = logging.getLogger("arrival.supervisor")
RESTART_LIMIT = 5


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def state(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def log(self) -> Path:
        return self.root / "supervisor.log"

    def service_log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


def read_state(paths: StatePaths) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}
    return state


def _write_state(paths: StatePaths, state: dict[str, Any]) -> None:
    scratch = paths.state.with_suffix(".tmp")
    scratch.write_text(json.dumps(state, indent=2))
    scratch.replace(paths.state)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  # our own localhost URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Supervisor:
    def __init__(self, settings: LocalCloudSettings, services: list[Service]) -> None:
        self.settings = settings
        self.paths = StatePaths(settings.state_dir)
        self.services = services
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, list[float]] = {}
        self.error: str | None = None
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, service: Service) -> None:
        log_path = self.paths.service_log(service.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for variable in ("TMPDIR", "LOCALSTACK_VOLUME_DIR"):
            if variable in service.env:
                Path(service.env[variable]).mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.children[service.name] = subprocess.Popen(
                service.argv,
                env={**service.env, CLOUD_ID_VARIABLE: self.settings.cloud_id},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # the supervisor is single-threaded
                cwd=self.paths.root,
            )
        LOG.info("started %s (pid %d)", service.name, self.children[service.name].pid)

    def _may_restart(self, service: Service) -> bool:
        """A crash loop still takes the cloud down: at most RESTART_LIMIT restarts a minute."""
        if not service.restart_on_exit or self.stopping:
            return False
        now = time.monotonic()
        recent = [moment for moment in self.restarts.get(service.name, []) if now - moment < 60]
        self.restarts[service.name] = [*recent, now]
        return len(recent) < RESTART_LIMIT

    def _wait_healthy(self, service: Service) -> str | None:
        """None when healthy, else why not."""
        started = time.monotonic()
        deadline = started + self.settings.startup_timeout_seconds
        child = self.children[service.name]
        while time.monotonic() < deadline and not self.stopping:
            if child.poll() is not None:
                return f"{service.name} exited with status {child.returncode} while starting:\n" + _log_tail(
                    self.paths.service_log(service.name)
                )
            if service.health_url is None:
                if time.monotonic() - started > 1.0:
                    return None
            elif _healthy(service.health_url):
                return None
            time.sleep(0.2)
        return f"{service.name} was not healthy at {service.health_url} in time"

    def _state(self, status: str, error: str | None = None) -> dict[str, Any]:
        # Why the cloud failed outlives its stop: `arrival status` reports it until the next `up`.
        self.error = error or self.error
        return {
            "pid": os.getpid(),
            "status": status,
            "error": self.error,
            "state_dir": str(self.paths.root),
            "endpoints": {
                "aws": self.settings.aws_endpoint_url,
                "mlflow": self.settings.mlflow_url,
                "api": self.settings.api_url,
            },
            "mlflow_artifact_bucket": self.settings.mlflow_artifact_bucket,
            "services": {
                name: {"pid": child.pid, "alive": child.poll() is None}
                for name, child in self.children.items()
            },
            "ports": [port for service in self.services for port in service.ports],
        }

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.paths.pidfile.write_text(str(os.getpid()))
        _write_state(self.paths, self._state("starting"))
        try:
            for service in self.services:
                if service.before_start is not None:
                    service.before_start()
                self._start(service)
                if error := self._wait_healthy(service):
                    LOG.error("%s", error)
                    _write_state(self.paths, self._state("failed", error))
                    return 1
            _write_state(self.paths, self._state("ready"))
            LOG.info("local cloud ready at %s", self.settings.aws_endpoint_url)
            while not self.stopping:
                for service in self.services:
                    child = self.children[service.name]
                    if child.poll() is None:
                        continue
                    error = f"{service.name} exited with status {child.returncode}"
                    if self._may_restart(service):
                        LOG.warning("%s; starting it again", error)
                        self._start(service)
                        _write_state(self.paths, self._state("ready"))
                        continue
                    LOG.error("%s", error)
                    _write_state(self.paths, self._state("failed", error))
                    self.stopping = True
                time.sleep(0.2)
            return 0
        finally:
            self._stop_all()

    def _stop_all(self) -> None:
        _write_state(self.paths, self._state("stopping"))
        for name in reversed(list(self.children)):
            terminate([self.children[name].pid], self.settings.shutdown_timeout_seconds / 2)
            self.children[name].wait()
            LOG.info("stopped %s", name)
        # Grandchildren (Lambda environments, trainers) that outlived their parent.
        terminate(marked_processes(self.settings.cloud_id), 5)
        self.paths.pidfile.unlink(missing_ok=True)
        if self.error:  # kept for `arrival status` until the next `up` or `down`
            _write_state(self.paths, {**self._state("failed"), "services": {}})
        else:
            self.paths.state.unlink(missing_ok=True)


def running_pid(paths: StatePaths) -> int | None:
    """The supervisor's pid if one is running on this state directory."""
    try:
        pid = int(paths.pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if is_alive(pid) else None


def main() -> int:
    settings = get_local_cloud_settings()
    paths = StatePaths(settings.state_dir)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    with exclusive_lock(paths.lock, blocking=False) as held:
        if held is None:
            LOG.error("another supervisor holds %s", paths.lock)
            return 3
        venv_python = emulator.ensure_virtualenv(settings)
        services = [
            emulator.localstack_service(settings, venv_python),
            tracking_server.mlflow_service(settings),
            instance_agent.agent_service(settings),
        ]
        return Supervisor(settings, services).run()


if __name__ == "__main__":
    sys.exit(main())
