"""`arrival reproduce`: rebuild a version from what its run logged and check it gives the same metrics."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.adapters import tracking
from worker.adapters import dvc_workspace


@dataclass(frozen=True)
class Reproduction:
    model: str
    version: str
    logged: dict[str, float]
    reproduced: dict[str, float]
    tolerance: float

    @property
    def differences(self) -> dict[str, float]:
        return {
            name: abs(self.reproduced.get(name, float("nan")) - value) for name, value in self.logged.items()
        }

    @property
    def matches(self) -> bool:
        return all(difference <= self.tolerance for difference in self.differences.values())


def reproduce(model: str, version: str, dvc_remote_url: str, tolerance: float = 1e-9) -> Reproduction:
    """Rebuild a version's workspace from what its run logged, `dvc pull`, rerun every stage, and
    compare the holdout metrics with the logged ones."""
    found = tracking.model_version(model, version)
    with tempfile.TemporaryDirectory(prefix=f"arrival-reproduce-{model}-") as scratch:
        downloaded = tracking.download_run_artifacts(found.run_id, "workspace", Path(scratch))
        workspace = Path(scratch) / "workspace"
        if downloaded != workspace:
            downloaded.rename(workspace)
        dvc_workspace.init(workspace, f"{dvc_remote_url}/{model}")
        dvc_workspace.pull(workspace)
        dvc_workspace.reproduce(workspace, force=True)
        reproduced = json.loads((workspace / "metrics.json").read_text())
    logged_metrics = tracking.run_metrics(found.run_id)
    logged = {name: logged_metrics[name] for name in reproduced if name in logged_metrics}
    return Reproduction(model, found.version, logged, reproduced, tolerance)
