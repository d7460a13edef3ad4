"""The scratch DVC workspace one training runs in: what goes into it, and which of its files a run
logs so that `arrival reproduce` can rebuild it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from common.contracts import parse_contract

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Logged with every run, under `workspace/`: what `arrival reproduce` rebuilds the run from.
WORKSPACE_FILES = [
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "contract.yaml",
    "code.json",
    "data/accepted.json",
    "data/accepted.json.dvc",
]


# A failed stage leaves its error here, one line, because DVC reports only "failed to reproduce"
# and the stage's own output goes to the log: the job's dead-letter reason names the cause with it
# (an AccessDenied naming its action and role, a contract the family does not know).
STAGE_FAILURE_FILE = ".arrival-stage-failure"


class StageFailedError(RuntimeError):
    """A pipeline stage failed; the message carries the stage's own error."""


def stage_failure(workspace: Path) -> str | None:
    note = workspace / STAGE_FAILURE_FILE
    return note.read_text() if note.is_file() else None


def pipeline_file(name: str) -> Path:
    """dvc.yaml or params.yaml: inside the package when installed from a wheel (see pyproject.toml),
    at the project's root in a checkout."""
    packaged = Path(__file__).resolve().parent / "pipeline" / name
    return packaged if packaged.exists() else PROJECT_ROOT / name


def code_fingerprint() -> str:
    """Stages depend on the code that runs them; in a scratch workspace that code is the installed
    package, so its fingerprint is what the stages declare."""
    digest = hashlib.sha256()
    for path in sorted([*(PROJECT_ROOT / "common").rglob("*.py"), *(PROJECT_ROOT / "worker").rglob("*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_workspace(workspace: Path, contract_bytes: bytes, accepted: dict[str, Any], bucket: str) -> None:
    params = yaml.safe_load(pipeline_file("params.yaml").read_text())
    contract = parse_contract(contract_bytes)
    params["estimator_params"] = {**params.get("estimator_params", {}), **contract.training.params}
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    (workspace / "dvc.yaml").write_text(pipeline_file("dvc.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    (workspace / "contract.yaml").write_bytes(contract_bytes)
    (workspace / "code.json").write_text(json.dumps({"fingerprint": code_fingerprint()}))
    (workspace / "data" / "accepted.json").write_text(
        json.dumps({"bucket": bucket, **accepted}, indent=2, sort_keys=True)
    )


def logged_files(workspace: Path) -> list[tuple[str, Path]]:
    """(artifact folder, file) for each workspace file a run logs."""
    return [
        (str(Path("workspace") / Path(name).parent).rstrip("/."), workspace / name)
        for name in WORKSPACE_FILES
    ]
