"""docs/aws.md names only what template.yaml has: a parameter, resource, output or rule the page
gives in backticks, as a `<placeholder>` or as a `Key=value` override exists in the template, and the
page's parameter table leaves none of the template's parameters out. Its section "Deploying from CI"
is about deploy/github-oidc.yaml as well, and is checked against both."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from localcloud.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "aws.md"
OIDC_TEMPLATE = ROOT / "deploy" / "github-oidc.yaml"
CI_SECTION = re.compile(r"^## Deploying from CI\n.*?(?=^## )", re.MULTILINE | re.DOTALL)

CAMEL_CASE = r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+"
FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(rf"<({CAMEL_CASE})>")
OVERRIDE = re.compile(rf"(?<![\w-])({CAMEL_CASE})=")
SUB_VARIABLE = re.compile(r"\$\{([^}!]+)\}")

# CamelCase names the page uses that are not the template's to define: AWS API actions, template
# property keys, the events arrival publishes, an AWS managed policy. Never a template name.
NOT_TEMPLATE_NAMES = {
    "AmazonSSMManagedInstanceCore",
    "GetSecretValue",
    "CodeUri",
    "CreationPolicy",
    "RebootInstances",
    "DatasetQuarantined",
    "DescribeStacks",
    "GetQueueAttributes",
    "LaunchTemplate",
    "ModelPromoted",
    "ModelRejected",
    "ModelRolledBack",
    "RunInstances",
    "TrainingFailed",
}


def _referenced(node: Any) -> Iterator[str]:
    """Logical ids the template refers to, including those SAM creates (its `ServerlessRestApi`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt" and isinstance(value, list):
                yield str(value[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                yield from (name.split(".")[0] for name in SUB_VARIABLE.findall(text))
            yield from _referenced(value)
    elif isinstance(node, list):
        for item in node:
            yield from _referenced(item)


@cache
def _template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


def _template_names(template: dict[str, Any] | None = None) -> set[str]:
    template = template or _template()
    defined = {
        name
        for section in ("Parameters", "Resources", "Outputs", "Rules", "Conditions")
        for name in template.get(section, {})
    }
    return defined | {name for name in _referenced(template) if "::" not in name}


def _stack_pages() -> str:
    """The page without its section on the deploy workflow's own template."""
    return CI_SECTION.sub("", DOC.read_text())


def _ci_section() -> str:
    found = CI_SECTION.search(DOC.read_text())
    assert found, "docs/aws.md has a section 'Deploying from CI'"
    return found.group()


def _backticked_names(text: str | None = None) -> set[str]:
    """Inline code spans (outside fenced blocks) that are a CamelCase name and nothing else."""
    prose = FENCED_BLOCK.sub("", DOC.read_text() if text is None else text)
    return {span for span in INLINE_CODE.findall(prose) if re.fullmatch(CAMEL_CASE, span)}


def test_every_template_name_the_page_gives_is_in_the_template() -> None:
    text = _stack_pages()
    named = _backticked_names(text) | set(PLACEHOLDER.findall(text))

    unknown = named - _template_names() - NOT_TEMPLATE_NAMES

    assert sorted(unknown) == [], "named in docs/aws.md but not in template.yaml"


def test_every_parameter_override_on_the_page_is_a_template_parameter() -> None:
    overridden = set(OVERRIDE.findall(_stack_pages()))

    assert overridden, "the page shows how to pass parameters"
    assert sorted(overridden - set(_template()["Parameters"])) == []


def test_the_page_names_every_template_parameter() -> None:
    assert sorted(set(_template()["Parameters"]) - _backticked_names()) == []


def test_no_template_name_is_excused_as_something_else() -> None:
    assert sorted(NOT_TEMPLATE_NAMES & _template_names()) == []


def test_the_ci_section_names_only_what_the_two_templates_have() -> None:
    section = _ci_section()
    oidc = load_template(OIDC_TEMPLATE)
    named = _backticked_names(section) | set(PLACEHOLDER.findall(section))

    unknown = named - _template_names() - _template_names(oidc) - NOT_TEMPLATE_NAMES

    assert sorted(unknown) == []
    # Its command deploys the OIDC template, with each of that template's parameters shown; its
    # variables pass the stack's.
    overridden = set(OVERRIDE.findall(section))
    assert sorted(overridden - set(oidc["Parameters"]) - set(_template()["Parameters"])) == []
    assert sorted(set(oidc["Parameters"]) - overridden - {"ImageRetentionCount"}) == []
