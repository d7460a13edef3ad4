"""The champion lifecycle's ports (common/champion.py) in memory, for fast unit tests of the CLI and
the trainer around it. The lifecycle itself is tested against a real MLflow registry and moto's S3
(tests/unit/test_champion_states.py)."""

from __future__ import annotations

from typing import Any

import pytest

from common.adapters import tracking
from common.bundles import ServingPointer
from common.champion import Champions, PointerMovedError


class Registry:
    """The registry, the serving pointer and the event bus, in memory (the lifecycle's ports), with
    a way to make one call fail once (a crash, or EventBridge down)."""

    def __init__(self) -> None:
        self.versions: dict[str, tracking.ModelVersion] = {}
        self.alias: str | None = None
        self.pointer_body: tuple[bytes, str] | None = None
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.failing: set[str] = set()
        self.bundles = True
        self.champions = Champions(self, self, self.publish)

    def add(self, version: str, **tags: str) -> tracking.ModelVersion:
        self.versions[version] = tracking.ModelVersion(
            "iris", version, f"run-{version}", {"accepted_list_hash": f"list-{version}", **tags}
        )
        return self.versions[version]

    def tags(self, version: str) -> dict[str, str]:
        return self.versions[version].tags

    def _maybe_fail(self, step: str) -> None:
        if step in self.failing:
            self.failing.discard(step)
            raise ConnectionError(f"{step} failed")

    @staticmethod
    def _copy(version: tracking.ModelVersion) -> tracking.ModelVersion:
        # What the real registry answers: a snapshot, not the live tags.
        return tracking.ModelVersion(version.name, version.version, version.run_id, dict(version.tags))

    # The registry
    def champion(self, name: str) -> tracking.ModelVersion | None:
        return self._copy(self.versions[self.alias]) if self.alias else None

    def model_version(self, name: str, version_or_alias: str) -> tracking.ModelVersion:
        return self._copy(self.versions[version_or_alias])

    def versions_of(self, name: str) -> list[tracking.ModelVersion]:
        return [self._copy(v) for _, v in sorted(self.versions.items(), key=lambda item: int(item[0]))]

    def versions_with_tag(self, name: str, key: str, value: str) -> list[tracking.ModelVersion]:
        return [self._copy(v) for v in self.versions.values() if v.tags.get(key) == value]

    def move_champion(self, name: str, model_version: str) -> None:
        self._maybe_fail("alias")
        self.alias = model_version

    def tag_version(self, name: str, model_version: str, key: str, value: str) -> None:
        self._maybe_fail(f"tag {key}")
        self.versions[model_version].tags[key] = value

    def untag_version(self, name: str, model_version: str, key: str) -> None:
        self._maybe_fail(f"untag {key}")
        self.versions[model_version].tags.pop(key, None)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return {"lineage.sources": '["s3://raw/iris/a.csv"]'}

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return {"f1_macro": 0.9}

    def finish_run_if_running(self, run_id: str) -> None:
        pass

    # The serving pointer
    def read(self, model: str) -> tuple[bytes, str] | None:
        return self.pointer_body

    def write(self, model: str, body: bytes, etag: str | None) -> str:
        self._maybe_fail("pointer")
        if etag != (self.pointer_body[1] if self.pointer_body else None):
            raise PointerMovedError(model)
        self.pointer_body = (body, f"etag-{len(self.sent)}-{body.__hash__()}")
        return self.pointer_body[1]

    def bundle_exists(self, model: str, version: str) -> bool:
        return self.bundles

    @property
    def pointer(self) -> str | None:
        return ServingPointer.model_validate_json(self.pointer_body[0]).version if self.pointer_body else None

    @pointer.setter
    def pointer(self, version: str) -> None:
        """A pointer as code before the lifecycle recorded changes wrote it."""
        legacy = ServingPointer(model="iris", version=version, manifest_key="m", promoted_at="t")
        self.pointer_body = (legacy.model_dump_json().encode(), f"legacy-{version}")

    # The event bus
    def publish(self, detail_type: str, detail: dict[str, Any]) -> None:
        self._maybe_fail(f"publish {detail_type}")
        self.sent.append((detail_type, detail))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every stack's lifecycle is this one (the trainer's and the commands')."""
        from cli import approval

        monkeypatch.setattr(Champions, "of_stack", classmethod(lambda cls, resources: self.champions))
        monkeypatch.setattr(approval, "champions_of", lambda stack_name: self.champions)

    def sent_types(self) -> list[str]:
        return [detail_type for detail_type, _ in self.sent]
