"""A fresh machine's first steps: uv without pip (PEP 668), and LocalStack's interpreter when the
machine has none."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from localcloud import bootstrap_uv, interpreters

FILES = [
    {"filename": "uv-0.13.9.tar.gz", "url": "a", "digests": {"sha256": "0"}},
    {"filename": "uv-0.13.9-py3-none-musllinux_1_1_x86_64.whl", "url": "b", "digests": {"sha256": "0"}},
    {
        "filename": "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "url": "c",
        "digests": {},
    },
    {"filename": "uv-0.13.9-py3-none-macosx_11_0_arm64.whl", "url": "d", "digests": {}},
]


def test_the_wheel_for_this_platform_is_picked() -> None:
    assert bootstrap_uv.pick_wheel(FILES, "linux", "x86_64")["url"] == "c"
    assert bootstrap_uv.pick_wheel(FILES, "darwin", "arm64")["url"] == "d"
    with pytest.raises(bootstrap_uv.BootstrapError, match="install uv yourself"):
        bootstrap_uv.pick_wheel(FILES, "win32", "AMD64")


def _wheel(binary: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("uv-0.13.9.data/scripts/uv", binary)
        archive.writestr("uv-0.13.9.dist-info/METADATA", "Name: uv")
    return buffer.getvalue()


def test_the_binary_comes_out_executable_and_only_if_the_digest_matches(tmp_path: Path) -> None:
    wheel = _wheel(b"#!/bin/sh\necho uv\n")

    with pytest.raises(bootstrap_uv.BootstrapError, match="SHA-256"):
        bootstrap_uv.extract_uv(wheel, "0" * 64, tmp_path)
    assert not (tmp_path / "uv").exists()

    uv = bootstrap_uv.extract_uv(wheel, hashlib.sha256(wheel).hexdigest(), tmp_path)
    assert uv.read_bytes() == b"#!/bin/sh\necho uv\n"
    assert uv.stat().st_mode & 0o111


def test_no_emulator_python_is_installed_with_uv_then_found(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[str] = []
    found: list[Path] = []
    monkeypatch.setattr(interpreters, "_candidates", lambda minimum: list(found))
    monkeypatch.setattr(interpreters, "_version_of", lambda python: (3, 13))

    def install(version: str) -> bool:
        installed.append(version)
        found.append(Path("/uv/python3.13"))
        return True

    assert interpreters.find_python((3, 13), install=install) == Path("/uv/python3.13")
    assert installed == ["3.13"]


def test_without_a_way_to_install_one_the_error_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreters, "_candidates", lambda minimum: [])
    with pytest.raises(interpreters.InterpreterNotFoundError, match=r"uv python install 3\.13"):
        interpreters.find_python((3, 13), install=lambda version: False)
