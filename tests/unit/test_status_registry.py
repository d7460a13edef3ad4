"""What `arrival status` reads of the registry, against a real (SQLite) MLflow store: a search leaves
the versions' aliases out, so they come from the registered model."""

from __future__ import annotations

from pathlib import Path

import mlflow

from common.adapters import tracking


def test_version_summaries_are_newest_first_with_their_aliases(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client.cache_clear()
    try:
        assert tracking.version_summaries("iris") == []
        client = tracking.client()
        client.create_registered_model("iris")
        for _ in range(3):
            client.create_model_version("iris", str(tmp_path), tags={"rejected": "worse"})
        tracking.move_champion("iris", "2")

        found = tracking.version_summaries("iris", newest=2)
    finally:
        tracking.client.cache_clear()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert [(version.version, version.aliases) for version in found] == [("3", []), ("2", ["champion"])]
    assert found[0].tags == {"rejected": "worse"}
