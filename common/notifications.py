"""What a person is told about each pipeline event: a short subject, a few lines of text naming the
model, the version or file and the reason, and the `arrival` command to look closer.

Pure: takes an EventBridge event's detail-type and detail, returns a `Notification`. An event this
module has no words for (a detail-type added later, or a detail missing a field it needs) still gets a
message, built from whatever the detail holds: a notification is never dropped for its shape.
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# SNS refuses a subject over 100 characters, or one that is not printable ASCII on one line.
SUBJECT_LIMIT = 100
# A reason or a column list may come from the file itself (a quarantine report quotes its values):
# clipped so a message stays a message, far below SNS's 256 KB.
FIELD_LIMIT = 300
# How much of an unknown event's detail is shown.
GENERIC_DETAIL_LIMIT = 2000
# The stack name the CLI assumes when given none (`--stack-name`).
DEFAULT_STACK = "arrival"

# C0 and C1 controls and Unicode's line and paragraph separators: each would start a new line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class Notification:
    detail_type: str
    subject: str
    text: str
    command: str
    model: str | None = None
    # S3 addresses the message points at (reports, outputs), for chat tools that link them.
    resources: list[str] = field(default_factory=list)
    # Why a known event got the generic message (its detail is not in the shape expected), if it did.
    problem: str | None = None

    def chatbot_json(self) -> str:
        """The message in the custom-notification format of AWS Chatbot (Amazon Q Developer in chat
        applications), which shows nothing it cannot parse: that is how Slack and Teams get it."""
        return json.dumps(
            {
                "version": "1.0",
                "source": "custom",
                "content": {
                    "textType": "client-markdown",
                    "title": self.subject,
                    "description": self.text,
                    "nextSteps": [f"`{self.command}`"],
                },
                "metadata": {
                    "eventType": self.detail_type,
                    "summary": self.subject,
                    "relatedResources": self.resources,
                    "additionalContext": {"model": self.model or "", "command": self.command},
                },
            }
        )


def one_line(value: Any, limit: int = FIELD_LIMIT) -> str:
    """A value as one line of text, control characters (newlines included) folded to a space."""
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def subject_line(text: str) -> str:
    """What SNS takes as a subject: printable ASCII (accents dropped), one line, at most 100 chars."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return one_line(ascii_text, SUBJECT_LIMIT) or "arrival notification"


def _arg(value: Any) -> str:
    """A value as one shell word: commands are meant to be pasted, and keys may hold spaces."""
    return shlex.quote(one_line(value))


def _with_stack(command: str, stack_name: str) -> str:
    return command if stack_name == DEFAULT_STACK else f"{command} --stack-name {stack_name}"


def _metrics(metrics: Any) -> str:
    if not isinstance(metrics, Mapping) or not metrics:
        return "none logged"
    return ", ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in sorted(metrics.items())
    )


def _names(values: Any) -> str:
    if isinstance(values, str) or not isinstance(values, Sequence):
        return one_line(values)
    return one_line(", ".join(map(str, values)))


def _file_name(uri: str) -> str:
    """The last segment of an S3 address, without its `?versionId=`."""
    return uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or uri


def _lines(*lines: str | None) -> str:
    return "\n".join(line for line in lines if line)


Formatter = Callable[[Mapping[str, Any], str], Notification]


def _quarantined(detail: Mapping[str, Any], stack: str) -> Notification:
    model = one_line(detail["model"])
    source = detail["source"]
    key = str(source["key"])
    uri = f"s3://{source['bucket']}/{key}"
    version = f" (version {source['version_id']})" if source.get("version_id") else ""
    violations = detail.get("violations") or []
    reasons = [f"- {one_line(v.get('rule'))}: {one_line(v.get('detail'))}" for v in violations[:3]]
    if len(violations) > 3:
        reasons.append(f"- and {len(violations) - 3} more rule(s) in the report")
    command = _with_stack(f"arrival contract check {_arg(_file_name(key))} --contract {_arg(model)}", stack)
    report = str(detail.get("report") or "")
    return Notification(
        detail_type="DatasetQuarantined",
        subject=subject_line(f"{stack}: {key} quarantined ({detail['rule']})"),
        text=_lines(
            f"Model {model}: file {one_line(uri)}{version} was quarantined; nothing trains on it and "
            "the model in service is untouched.",
            f"Reason: rule {one_line(detail['rule'])}",
            *reasons,
            f"Report: {report}" if report else None,
            f"Look closer: {command} (with a copy of the file)",
        ),
        command=command,
        model=model,
        resources=[r for r in (uri, report) if r],
    )


def _lineage(detail: Mapping[str, Any]) -> str | None:
    lineage = detail.get("lineage") or []
    if not lineage:
        return None
    files = detail.get("lineage_files", len(lineage))
    return f"Trained on {files} file(s), the latest {one_line(lineage[-1])}"


def _promoted(detail: Mapping[str, Any], stack: str) -> Notification:
    model, version = one_line(detail["name"]), one_line(detail["version"])
    previous = detail.get("champion_version")
    command = _with_stack("arrival status", stack)
    return Notification(
        detail_type="ModelPromoted",
        subject=subject_line(f"{stack}: {model} version {version} promoted"),
        text=_lines(
            f"Model {model}: version {version} is the champion and serves now"
            + (f" (it replaces version {previous})." if previous else " (the first champion)."),
            f"Reason: {one_line(detail.get('reason', 'not given'))}",
            f"Metrics: {_metrics(detail.get('metrics'))}",
            _lineage(detail),
            f"Look closer: {command}",
            f"Undo: {_with_stack(f'arrival rollback --model {_arg(model)}', stack)}" if previous else None,
        ),
        command=command,
        model=model,
    )


def _rejected(detail: Mapping[str, Any], stack: str) -> Notification:
    model, version = one_line(detail["name"]), one_line(detail["version"])
    champion = detail.get("champion_version")
    command = _with_stack("arrival status", stack)
    return Notification(
        detail_type="ModelRejected",
        subject=subject_line(f"{stack}: {model} version {version} rejected by the gate"),
        text=_lines(
            f"Model {model}: version {version} was not promoted; "
            + (f"version {champion} stays the champion." if champion else "there is no champion yet."),
            f"Reason: {one_line(detail.get('reason', 'not given'))}",
            f"Metrics: {_metrics(detail.get('metrics'))}",
            _lineage(detail),
            f"Look closer: {command}",
        ),
        command=command,
        model=model,
    )


def _training_failed(detail: Mapping[str, Any], stack: str) -> Notification:
    model = one_line(detail["name"])
    command = _with_stack("arrival logs trainer", stack)
    return Notification(
        detail_type="TrainingFailed",
        subject=subject_line(f"{stack}: training {model} failed"),
        text=_lines(
            f"Model {model}: training failed after {detail.get('attempts', '?')} attempt(s); the job is in "
            "the training dead-letter queue and the champion stays.",
            f"Reason: {one_line(detail.get('failure_reason', 'not given'))}",
            f"Look closer: {command}",
            f"Once the cause is fixed: {_with_stack('arrival redrive training', stack)}",
        ),
        command=command,
        model=model,
    )


def _rolled_back(detail: Mapping[str, Any], stack: str) -> Notification:
    model, version = one_line(detail["name"]), one_line(detail["version"])
    command = _with_stack("arrival status", stack)
    return Notification(
        detail_type="ModelRolledBack",
        subject=subject_line(f"{stack}: {model} rolled back to version {version}"),
        text=_lines(
            f"Model {model}: version {version} is the champion and serves again"
            f" (it replaces version {detail.get('from_version', '?')}).",
            f"Reason: {one_line(detail.get('reason', 'not given'))}",
            f"Look closer: {command}",
        ),
        command=command,
        model=model,
    )


def _drift(detail: Mapping[str, Any], stack: str) -> Notification:
    model, version = one_line(detail["name"]), one_line(detail["version"])
    kind = str(detail.get("kind", "data")).replace("_", " ")
    columns = detail.get("drifted_columns") or []
    report = str(detail.get("report") or "")
    command = _with_stack(f"arrival drift --model {_arg(model)}", stack)
    return Notification(
        detail_type="DriftDetected",
        subject=subject_line(f"{stack}: drift in {model} ({kind}, {len(columns)} column(s))"),
        text=_lines(
            f"Model {model} (champion version {version}): the {kind} drifted from the champion's training "
            f"data in {len(columns)} column(s).",
            f"Reason: drift past the contract's thresholds in {_names(columns)}",
            f"Report: {report}" if report else None,
            f"Look closer: {command}",
        ),
        command=command,
        model=model,
        resources=[r for r in (report, str(detail.get("summary") or "")) if r],
    )


def _approval(detail: Mapping[str, Any], stack: str) -> Notification:
    model, version = one_line(detail["name"]), one_line(detail["version"])
    champion = detail.get("champion_version")
    command = _with_stack(f"arrival approve --model {_arg(model)} --version {_arg(version)}", stack)
    reject = _with_stack(
        f"arrival reject --model {_arg(model)} --version {_arg(version)} --reason TEXT", stack
    )
    return Notification(
        detail_type="ApprovalRequested",
        subject=subject_line(f"{stack}: {model} version {version} awaits approval"),
        text=_lines(
            f"Model {model}: version {version} passed the gate and waits for a person's approval before "
            + (f"it replaces version {champion}." if champion else "it serves (there is no champion yet)."),
            f"Reason: {one_line(detail.get('reason', 'not given'))}",
            f"Metrics: {_metrics(detail.get('metrics'))}",
            f"Approve: {command}",
            f"Or reject: {reject}",
        ),
        command=command,
        model=model,
    )


def _batch_completed(detail: Mapping[str, Any], stack: str) -> Notification:
    model, source = one_line(detail["name"]), str(detail["input"])
    output, rejects = detail.get("output"), detail.get("rejects")
    scored, rejected = int(detail.get("rows_scored", 0)), int(detail.get("rows_rejected", 0))
    seconds = detail.get("seconds")
    took = f" in {float(seconds):.1f} s" if isinstance(seconds, int | float) else ""
    # Where the results are is the closer look; the CLI has no reader for a predictions file.
    command = f"aws s3 cp {_arg(output)} ." if output else _with_stack("arrival status", stack)
    return Notification(
        detail_type="BatchCompleted",
        subject=subject_line(
            f"{stack}: batch {_file_name(source)} scored by {model}"
            + (f" ({rejected} row(s) rejected)" if rejected else "")
        ),
        text=_lines(
            f"Model {model} version {detail.get('version', '?')} scored {scored:,} row(s) of "
            f"{one_line(source)}{took}.",
            f"Reason: {rejected:,} row(s) broke the contract and were not scored (see the rejects file)."
            if rejected
            else "Every row met the contract.",
            f"Predictions: {output}" if output else None,
            f"Rejects: {rejects}" if rejects else None,
            f"Look closer: {command}",
        ),
        command=command,
        model=model,
        resources=[str(r) for r in (source, output, rejects) if r],
    )


def _batch_failed(detail: Mapping[str, Any], stack: str) -> Notification:
    model, source = one_line(detail["name"]), str(detail["input"])
    report = str(detail.get("report") or "")
    contract = _with_stack(f"arrival contract get {_arg(model)}", stack)
    # The failure's report says what went wrong with the file; without one, what the file must hold.
    command = f"aws s3 cp {_arg(report)} -" if report else contract
    return Notification(
        detail_type="BatchFailed",
        subject=subject_line(f"{stack}: batch {_file_name(source)} for {model} failed"),
        text=_lines(
            f"Model {model}: batch file {one_line(source)} was not scored.",
            f"Reason: {one_line(detail.get('reason', 'not given'))}",
            f"Report: {report}" if report else None,
            f"Look closer: {command}",
            f"What a file must hold: {contract}" if report else None,
        ),
        command=command,
        model=model,
        resources=[r for r in (source, report) if r],
    )


FORMATTERS: dict[str, Formatter] = {
    "DatasetQuarantined": _quarantined,
    "ModelPromoted": _promoted,
    "ModelRejected": _rejected,
    "TrainingFailed": _training_failed,
    "ModelRolledBack": _rolled_back,
    "DriftDetected": _drift,
    "ApprovalRequested": _approval,
    "BatchCompleted": _batch_completed,
    "BatchFailed": _batch_failed,
}


def generic(detail_type: str, detail: Any, stack: str, problem: str | None = None) -> Notification:
    """Any event, from what its detail holds: the model and reason if it names them, then the detail.
    `problem` says why an event of a known type is shown this way."""
    fields = detail if isinstance(detail, Mapping) else {}
    model = fields.get("name") or fields.get("model")
    reason = fields.get("reason") or fields.get("failure_reason") or fields.get("rule")
    command = _with_stack("arrival status", stack)
    shown = one_line(json.dumps(detail, default=str, sort_keys=True), GENERIC_DETAIL_LIMIT)
    return Notification(
        detail_type=detail_type,
        subject=subject_line(f"{stack}: {detail_type}" + (f" for {model}" if model else "")),
        text=_lines(
            f"Event {one_line(detail_type)} from arrival"
            + (f" for model {one_line(model)}." if model else "."),
            f"Reason: {one_line(reason)}" if reason else None,
            f"(Its detail is not in the shape arrival knows: {one_line(problem)}.)" if problem else None,
            f"Detail: {shown}",
            f"Look closer: {command}",
        ),
        command=command,
        model=one_line(model) if model else None,
        problem=problem,
    )


def notification_for(detail_type: str, detail: Any, stack_name: str) -> Notification:
    """The notification of one event. A known detail-type whose detail lacks what its words need (a
    producer that changed its shape) falls back to the generic message, which shows the detail."""
    formatter = FORMATTERS.get(detail_type)
    if formatter is None:
        return generic(detail_type, detail, stack_name)
    if not isinstance(detail, Mapping):
        return generic(detail_type, detail, stack_name, f"a {type(detail).__name__}, not an object")
    try:
        return formatter(detail, stack_name)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        return generic(detail_type, detail, stack_name, f"{type(error).__name__} {error}")
