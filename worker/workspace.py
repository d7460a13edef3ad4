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
    "recipe.py",
    "data/accepted.json",
    "data/accepted.json.dvc",
]


# A failed stage leaves its error here, one line, because DVC reports only "failed to reproduce"
# and the stage's own output goes to the log: the job's dead-letter reason names the cause with it
# (an AccessDenied naming its action and role, a contract the family does not know).
STAGE_FAILURE_FILE = ".arrival-stage-failure"


class StageFailedError(RuntimeError):
    """A pipeline stage failed; the message carries the stage's own error. `deterministic` when the
    recipe's code failed: a retry would fail the same way, so the job is dead-lettered at once."""

    def __init__(self, message: str, deterministic: bool = False) -> None:
        super().__init__(message)
        self.deterministic = deterministic


def note_stage_failure(workspace: Path, stage: str, message: str, deterministic: bool) -> None:
    note = {"stage": stage, "message": message[:4000], "deterministic": deterministic}
    (workspace / STAGE_FAILURE_FILE).write_text(json.dumps(note))


# Each stage notes how long its own body took, here, so the run can say where a training's time goes:
# the stages themselves, or DVC's bookkeeping between them (hashing, the lock, each command's start).
STAGE_SECONDS_FILE = ".arrival-stage-seconds"


def note_stage_seconds(workspace: Path, stage: str, seconds: float) -> None:
    path = workspace / STAGE_SECONDS_FILE
    noted = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**noted, stage: seconds}))


def stage_seconds(workspace: Path) -> dict[str, float]:
    """{stage: seconds} for every stage that ran to its end in this workspace."""
    path = workspace / STAGE_SECONDS_FILE
    noted: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
    return noted


def stage_failure(workspace: Path) -> StageFailedError | None:
    """The error a failed stage noted, if it noted one."""
    note_file = workspace / STAGE_FAILURE_FILE
    if not note_file.is_file():
        return None
    note = json.loads(note_file.read_text())
    return StageFailedError(f"stage {note['stage']}: {note['message']}", note["deterministic"])


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


def write_workspace(
    workspace: Path, contract_bytes: bytes, accepted: dict[str, Any], bucket: str, recipe: bytes
) -> None:
    """`recipe`: the recipe's bytes, or worker/recipes.py's BUILT_IN marker."""
    params = yaml.safe_load(pipeline_file("params.yaml").read_text())
    contract = parse_contract(contract_bytes)
    params["estimator_params"] = {**params.get("estimator_params", {}), **contract.training.params}
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    (workspace / "dvc.yaml").write_text(pipeline_file("dvc.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    (workspace / "contract.yaml").write_bytes(contract_bytes)
    (workspace / "code.json").write_text(json.dumps({"fingerprint": code_fingerprint()}))
    (workspace / "recipe.py").write_bytes(recipe)
    (workspace / "data" / "accepted.json").write_text(
        json.dumps({"bucket": bucket, **accepted}, indent=2, sort_keys=True)
    )


def logged_files(workspace: Path) -> list[tuple[str, Path]]:
    """(artifact folder, file) for each workspace file a run logs."""
    return [
        (str(Path("workspace") / Path(name).parent).rstrip("/."), workspace / name)
        for name in WORKSPACE_FILES
    ]
