"""Each component's docs page documents every variable its settings class reads: a row of the page's
settings table per variable, naming its default, and a link back to the README. A setting added
without its row fails here."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from cli.target import CliSettings
from common.settings import (
    BatchSettings,
    MonitoringSettings,
    NotifySettings,
    PipelineSettings,
    SweepSettings,
    WorkerSettings,
)
from localcloud.settings import LocalCloudSettings
from serving.settings import ServingSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"

PAGES: dict[str, list[type[BaseSettings]]] = {
    "ingest.md": [PipelineSettings, SweepSettings],
    "training.md": [WorkerSettings],
    "serving.md": [ServingSettings],
    "batch.md": [BatchSettings],
    "monitoring.md": [MonitoringSettings],
    "local-cloud.md": [LocalCloudSettings, CliSettings],
    "notifications.md": [NotifySettings],
}

TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|(.*)$", re.MULTILINE)


def variable_name(settings: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable pydantic-settings reads the field from."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def default_words(field: FieldInfo) -> list[str]:
    """What the field's row must say about its default; nothing for a computed one."""
    if field.is_required():
        return ["required"]
    if field.default_factory is not None:
        produced = field.default_factory()  # type: ignore[call-arg]
        return [str(item) for item in produced] if isinstance(produced, list) else []
    default = field.default
    if default is None:
        return ["unset"]
    if isinstance(default, bool):
        return [str(default).lower()]
    if isinstance(default, Enum):
        return [str(default.value)]
    if isinstance(default, int | float):
        return [f"{default:g}" if isinstance(default, float) else str(default)]
    if isinstance(default, list):
        return [str(item) for item in default]
    return [str(default)]


def documented_rows(page: str) -> dict[str, str]:
    return dict(TABLE_ROW.findall((DOCS / page).read_text()))


CASES = [
    pytest.param(page, settings, variable_name(settings, name, field), field, id=f"{page}:{name}")
    for page, classes in PAGES.items()
    for settings in classes
    for name, field in settings.model_fields.items()
]


@pytest.mark.parametrize(("page", "settings", "variable", "field"), CASES)
def test_every_setting_has_a_row_naming_its_default(
    page: str, settings: type[BaseSettings], variable: str, field: FieldInfo
) -> None:
    # GIVEN the variable a field of the settings class is read from
    # WHEN the component's page is read
    rows = documented_rows(page)
    # THEN its settings table has a row for it that names the default
    assert variable in rows, f"docs/{page} has no settings row for {variable} ({settings.__name__})"
    missing = [word for word in default_words(field) if word not in rows[variable]]
    assert not missing, f"docs/{page}: the row of {variable} does not say its default {missing}"


@pytest.mark.parametrize("page", PAGES)
def test_every_row_is_a_setting_of_the_page(page: str) -> None:
    read = {
        variable_name(settings, name, field)
        for settings in PAGES[page]
        for name, field in settings.model_fields.items()
    }
    assert set(documented_rows(page)) <= read, f"docs/{page} documents variables nothing reads"


@pytest.mark.parametrize("page", PAGES)
def test_each_page_links_back_to_the_readme(page: str) -> None:
    assert "](../README.md" in (DOCS / page).read_text()
