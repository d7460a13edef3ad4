"""What the operator's commands do against a deployed stack (LocalStack or AWS, by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from common.adapters.stack import StackResources, stack_outputs

if TYPE_CHECKING:
    from common.champion import RolledBack
    from worker.reproduce import Reproduction


T = TypeVar("T")


class OperationError(Exception):
    """A one-line reason the command cannot do what was asked, and what to do about it."""


def outputs_of(stack_name: str) -> dict[str, str]:
    """The stack's outputs, or an OperationError saying how to get a stack."""
    try:
        return stack_outputs(stack_name)
    except ClientError as error:
        # CloudFormation answers a missing stack with the generic ValidationError code: only its
        # message tells it apart from a malformed request.
        if "does not exist" in str(error):
            raise OperationError(f"no stack named {stack_name}: run `arrival deploy`") from None
        raise
    except BotoCoreError as error:
        raise OperationError(
            f"cannot reach the cloud to read stack {stack_name} ({error}): "
            "is the local cloud up (`arrival status`)?"
        ) from None


def reproduce(model: str, version: str, stack_name: str) -> Reproduction:
    from common.adapters import tracking
    from worker.reproduce import reproduce as reproduce_version

    remote = outputs_of(stack_name)["DvcRemoteUrl"]
    known = tracking.version_summaries(model, newest=1000)
    if not known:
        models = ", ".join(tracking.registered_models()) or "none yet"
        raise OperationError(f"model {model!r} has no versions (registered models: {models})")
    aliases = {alias for summary in known for alias in summary.aliases}
    if version not in {summary.version for summary in known} | aliases:
        named = ", ".join(sorted(aliases)) or "none"
        raise OperationError(
            f"model {model!r} has no version or alias {version!r} "
            f"(versions {known[-1].version} to {known[0].version}; aliases: {named})"
        )
    return reproduce_version(model, version, remote)


def rollback(model: str, to_version: str | None, by: str, stack_name: str) -> RolledBack:
    """Serve an earlier version (common/champion.py decides which, and carries it out)."""
    from common.champion import Champions, LifecycleError

    resources = StackResources.from_outputs(outputs_of(stack_name))
    try:
        return Champions.of_stack(resources).rollback(model, to_version, by)
    except LifecycleError as error:
        raise OperationError(str(error)) from error


def wait_for(probe: Callable[[], T | None], deadline: float, what: str) -> T:
    """Poll until `probe` answers, or TimeoutError once time.monotonic() passes `deadline`."""
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen in time")
        time.sleep(0.5)
    return result
