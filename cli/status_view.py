"""How `arrival status` prints its report (cli/status.py gathers it): one screen, a block per model."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_cloud(console: Console, report: dict[str, Any]) -> None:
    console.print(f"local cloud: {report['status']}" + (f" (pid {report['pid']})" if report["pid"] else ""))
    console.print(f"  commands target: {report['target']} (--aws or ARRIVAL_TARGET=aws for your AWS account)")
    if not report["running"] and report.get("last_error"):
        console.print(
            f"  it stopped because {escape(report['last_error'].splitlines()[0])}; `arrival up` starts it "
            "again (empty: then `arrival deploy`, put the contracts and upload the data again)"
        )
    if report["running"]:
        for name, url in report["endpoints"].items():
            console.print(f"  {name}: {url}", highlight=False)


def _release_of(instance: dict[str, Any], stack_release: str | None) -> str:
    """The instance's release, and whether the stack has moved on from it."""
    own = instance.get("release")
    if own is None:
        return "release unknown"
    return f"release {own}" + (" (older than the stack's)" if stack_release and own != stack_release else "")


def print_stack(console: Console, stack: dict[str, Any]) -> None:
    if "error" in stack:
        console.print(f"stack {stack['stack']}: {escape(stack['error'])}", soft_wrap=True)
        return
    queues = stack["queues"]
    console.print(
        f"stack {stack['stack']}: "
        + "; ".join(
            f"{name} queue {counts['queued']} queued, {counts['in_flight']} in flight, "
            f"{counts['dead_letters']} dead-lettered"
            for name, counts in queues.items()
        ),
        soft_wrap=True,
    )
    release = stack.get("release")
    if release:
        console.print(f"  release: {release}")
    trainers = ", ".join(
        f"{t['instance_id']} ({_age(t['running_seconds'])}, {_release_of(t, release)}, "
        f"{'training ' + escape(t['training']) if t.get('training') else 'idle'})"
        for t in stack["trainers"]
    )
    console.print(f"  trainers: {trainers or 'none running'}", soft_wrap=True)
    if stack.get("server"):
        console.print(f"  server: {stack['server']['instance_id']} ({_release_of(stack['server'], release)})")
    for problem in stack.get("problems", []):
        console.print(f"  [red]![/red] {escape(problem)}", soft_wrap=True)
    if stack.get("registry_error"):
        console.print(f"  [red]{escape(stack['registry_error'])}[/red]", soft_wrap=True)
    if not stack["models"]:
        console.print("  no models yet: `arrival contract put contracts/iris.yaml`, then `arrival upload`")
    for model in stack["models"]:
        _print_model(console, model)


def _print_model(console: Console, model: dict[str, Any]) -> None:
    data = model["datasets"]
    quarantined = sum(data["quarantined"].values())
    rules = ", ".join(f"{rule} {count}" for rule, count in sorted(data["quarantined"].items()))
    serving = model["serving"]
    console.print(
        f"\n[bold]{model['name']}[/bold]  datasets: {data['accepted']} accepted ({data['rows']} rows), "
        f"{quarantined} quarantined" + (f" ({rules})" if rules else ""),
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"  champion: {model['champion'] or 'none'}   serving pointer: {serving['pointer'] or 'none'}"
        f"   API answers with: {serving['api'] or 'unknown'}",
        highlight=False,
    )
    if model["awaiting_approval"]:
        waiting = ", ".join(model["awaiting_approval"])
        console.print(
            f"  [yellow]awaiting approval: version {waiting}[/yellow] "
            f"(`arrival approve --model {model['name']} --version N`)"
        )
    if model["versions"]:
        console.print(_versions_table(model))
    for problem in model["problems"]:
        console.print(f"  [red]![/red] {escape(problem)}", soft_wrap=True)


def _versions_table(model: dict[str, Any]) -> Table:
    metric = model["metric"] or "metric"
    table = Table(box=None, padding=(0, 2), show_edge=False, pad_edge=False)
    for header in ("  version", "aliases", metric, "decision", "reason", "data drift"):
        table.add_column(header, overflow="fold")
    for version in model["versions"]:
        value = version["metric"].get(model["metric"]) if model["metric"] else None
        drift = version["drift"]
        if drift == "drifted":
            drift = f"drifted: {', '.join(version['drifted_columns'])}"
        table.add_row(
            f"  {version['version']}",
            ", ".join(version["aliases"]),
            "" if value is None else f"{value:.4f}",
            version["decision"],
            escape(version["reason"]),
            escape(drift),
        )
    return table


def _age(seconds: int) -> str:
    """How long an instance has run, said as such."""
    return f"up {seconds} s" if seconds < 120 else f"up {seconds // 60} min"
