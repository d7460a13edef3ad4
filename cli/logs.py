"""`arrival logs`: the functions' CloudWatch Logs, and the instances' output, which their CloudWatch
agent (the local instance agent, locally) ships to the stack's log groups."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cli.operations import OperationError, outputs_of
from common.adapters.logs import LogLine, NoLogGroupError, lines_since

SOURCES = ("ingest", "reconcile", "serving", "trainer", "batch", "notify", "drift", "sweep")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
FOLLOW_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class SourcedLine:
    source: str
    line: LogLine


def log_groups(source: str | None, stack_name: str) -> dict[str, list[str]]:
    """The log groups of each source asked for (all of them if None), from the stack's outputs."""
    if source is not None and source not in SOURCES:
        raise OperationError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    outputs = outputs_of(stack_name)
    if "TrainerLogGroupName" not in outputs:
        raise OperationError(
            f"stack {stack_name} predates the instances' log groups: run `arrival deploy` to update it"
        )
    groups = {
        "ingest": [f"/aws/lambda/{outputs['IngestFunctionName']}"],
        "reconcile": [f"/aws/lambda/{outputs['ReconcileFunctionName']}"],
        # The model server on its instance, and the same API on Lambda.
        "serving": [outputs["ServingLogGroupName"], f"/aws/lambda/{outputs['ServingFunctionName']}"],
        "trainer": [outputs["TrainerLogGroupName"]],
        "batch": [f"/aws/lambda/{outputs['BatchFunctionName']}"],
        "notify": [f"/aws/lambda/{outputs['NotifyFunctionName']}"],
        "drift": [f"/aws/lambda/{outputs['DriftFunctionName']}"],
        # A stack deployed before the sweep has none, and so no lines of it.
        "sweep": [f"/aws/lambda/{name}"] if (name := outputs.get("SweepFunctionName")) else [],
    }
    return {name: groups[name] for name in ([source] if source else SOURCES)}


def since_ms(since: str, now: float | None = None) -> int:
    """`30s`, `10m`, `2h` or `1d` ago, in epoch milliseconds."""
    matched = _DURATION.match(since.strip())
    if matched is None:
        raise OperationError(f"--since {since!r} is not a duration such as 30s, 10m, 2h or 1d")
    seconds = int(matched.group(1)) * _SECONDS[matched.group(2)]
    return int(((now if now is not None else time.time()) - seconds) * 1000)


def read(groups: dict[str, list[str]], start_ms: int) -> list[SourcedLine]:
    """Every line since `start_ms` across the groups, in time order; a group that does not exist yet
    (a function never invoked) has none."""
    found: list[SourcedLine] = []
    for source, names in groups.items():
        for group in names:
            try:
                found.extend(SourcedLine(source, line) for line in lines_since(group, start_ms))
            except NoLogGroupError:
                continue
    return sorted(found, key=lambda item: (item.line.timestamp_ms, item.line.event_id))


def follow(
    groups: dict[str, list[str]],
    start_ms: int,
    keep_going: Callable[[], bool] = lambda: True,
    poll_seconds: float = FOLLOW_POLL_SECONDS,
) -> Iterator[SourcedLine]:
    """The lines since `start_ms`, then each new one as it arrives, each once."""
    seen: dict[str, int] = {}  # event id -> its time, for the lines at or after start_ms
    while True:
        fresh = [item for item in read(groups, start_ms) if item.line.event_id not in seen]
        for item in fresh:
            seen[item.line.event_id] = item.line.timestamp_ms
            yield item
        if fresh:
            # Lines of the same millisecond may still come: ask from it again, and skip what was seen.
            start_ms = fresh[-1].line.timestamp_ms
            seen = {event: at for event, at in seen.items() if at >= start_ms}
        if not keep_going():
            return
        time.sleep(poll_seconds)
