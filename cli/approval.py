"""`arrival approve` and `arrival reject`: a person's decision on a version that the gate passed
under manual approval (`training.approval: manual` in the model's contract), and what waits for
one. The decision is carried out by the champion's lifecycle (common/champion.py), in its
crash-safe order.

Each command is safe to run twice: repeating a decision already carried out says so and succeeds
(finishing it first if a crash cut it short, e.g. sending an event that never went out); asking for
the other decision, or deciding on a version that does not wait, is refused with the reason."""

from __future__ import annotations

import getpass
from typing import Any

from cli.operations import OperationError, outputs_of
from common.adapters.stack import StackResources
from common.champion import Champions, Decided, LifecycleError


def current_user() -> str:
    """Who runs the command ($USER, else the login name), recorded in the version's tags."""
    try:
        return getpass.getuser()
    except OSError:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def champions_of(stack_name: str) -> Champions:
    return Champions.of_stack(StackResources.from_outputs(outputs_of(stack_name)))


def approve(model: str, version: str, by: str, stack_name: str) -> Decided:
    try:
        return champions_of(stack_name).approve(model, version, by)
    except LifecycleError as error:
        raise OperationError(str(error)) from error


def reject(model: str, version: str, reason: str, by: str, stack_name: str) -> Decided:
    try:
        return champions_of(stack_name).reject(model, version, reason, by)
    except LifecycleError as error:
        raise OperationError(str(error)) from error


def waiting(model: str, stack_name: str) -> list[dict[str, Any]]:
    """The versions awaiting approval, newest (the one that can be approved) first."""
    return champions_of(stack_name).waiting(model)
