"""A model as serving answers with it: a proven bundle (common/bundle_loader.py, which batch scoring
loads too) and the request schemas generated from its contract."""

from __future__ import annotations

from dataclasses import dataclass, fields

from common.bundle_loader import LoadedBundle
from serving.schemas import RequestSchemas, request_schemas


@dataclass(frozen=True)
class LoadedModel(LoadedBundle):
    schemas: RequestSchemas

    @classmethod
    def of(cls, bundle: LoadedBundle, *, max_batch: int) -> LoadedModel:
        proven = {field.name: getattr(bundle, field.name) for field in fields(LoadedBundle)}
        return cls(**proven, schemas=request_schemas(bundle.manifest.contract, max_batch))
