"""`arrival up` on a machine that is not ready for it: each way it cannot start is one line saying
what is wrong and what to do, with exit code 1, and nothing is left running."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from localcloud import interpreters
from localcloud.processes import free_port
from localcloud.settings import get_local_cloud_settings


def _up(monkeypatch: pytest.MonkeyPatch, state_dir: Path, aws_port: int) -> Result:
    for name, value in {
        "ARRIVAL_STATE_DIR": str(state_dir),
        "ARRIVAL_AWS_PORT": str(aws_port),
        "ARRIVAL_MLFLOW_PORT": str(free_port()),
        "ARRIVAL_API_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    get_local_cloud_settings.cache_clear()
    try:
        return CliRunner().invoke(app, ["up"])
    finally:
        get_local_cloud_settings.cache_clear()


def _one_line(result: Result, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_a_port_taken_names_the_port_and_the_setting_to_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        result = _up(monkeypatch, tmp_path / "cloud", port)

    _one_line(result, f"port {port} is already in use", f"ARRIVAL_AWS_PORT={port + 1000}")
    assert not (tmp_path / "cloud" / "supervisor.pid").exists()


def test_an_emulator_interpreter_that_is_not_one_says_how_to_point_at_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ARRIVAL_LOCALSTACK_PYTHON", str(tmp_path / "no-such-python"))

    result = _up(monkeypatch, tmp_path / "cloud", free_port())

    _one_line(result, "ARRIVAL_LOCALSTACK_PYTHON=", "is not a Python >= 3.13", "uv python install 3.13")


def test_no_emulator_interpreter_and_none_to_install_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN a machine with no Python >= 3.13 anywhere, and no network for uv to fetch one
    monkeypatch.delenv("ARRIVAL_LOCALSTACK_PYTHON", raising=False)
    monkeypatch.setattr(interpreters, "_candidates", lambda minimum: [])
    asked: list[str] = []

    def install_with_uv(version: str) -> bool:
        asked.append(version)
        return False

    monkeypatch.setattr(interpreters, "install_with_uv", install_with_uv)
    monkeypatch.setattr("localcloud.emulator.install_with_uv", interpreters.install_with_uv)

    result = _up(monkeypatch, tmp_path / "cloud", free_port())

    # THEN it said it would install one, tried, and ends with one line saying what to do instead
    assert asked == ["3.13"]
    assert result.exit_code == 1, result.output
    progress, error = result.output.strip().splitlines()
    assert "installing one (`uv python install 3.13`)" in progress
    assert error.startswith("error: LocalStack needs Python >= 3.13")
    assert "did not get one here (offline?)" in error
    assert "ARRIVAL_LOCALSTACK_PYTHON" in error


def test_down_with_nothing_running_says_so_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ARRIVAL_STATE_DIR", str(tmp_path / "cloud"))
    get_local_cloud_settings.cache_clear()
    try:
        results = [CliRunner().invoke(app, ["down"]) for _ in range(2)]  # safe to run twice
    finally:
        get_local_cloud_settings.cache_clear()

    for result in results:
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "local cloud was not running"
