"""`arrival status`: the deployed stack, model by model, on one screen (and as JSON for scripts).

Everything here is read from outside, as an operator sees it: the stack's buckets, queues and
instances through arrival's adapters, the registry through MLflow, the API over HTTP. Nothing is
changed, and a part that does not answer is reported as such instead of failing the whole view.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from cli.contracts import contract_models
from cli.operations import OperationError, outputs_of
from common.adapters import s3, sqs
from common.adapters.stack import stack_parameter
from common.champion import ROLLED_BACK
from common.contracts import parse_contract
from common.layout import accepted_list_key, contract_key

# How much of a model's history one screen shows; --json carries the same.
VERSIONS_SHOWN = 8
# Quarantine reports read per model to count them by rule (newest keys first is not something S3
# lists, so a model with more is counted in full and only this many are read for their rule).
REPORTS_READ = 200
# A dead-letter queue is peeked (left as it is) for at most this many messages.
DEAD_LETTERS_PEEKED = 100

# Tags the gate and an operator leave on a version, in the order they settle its state.
DECISION_TAGS = (
    ("promotion", "promoted"),
    ("rejected", "rejected"),
    ("superseded", "superseded"),
    ("awaiting_approval", "awaiting approval"),
)


def stack_status(stack_name: str, api_url: str | None) -> dict[str, Any]:
    """The stack's queues and trainers, and each model's data, jobs, versions and serving."""
    outputs = outputs_of(stack_name)
    ingest_dead = _dead_letter_models(outputs["IngestDeadLetterQueueUrl"], _model_of_s3_event)
    training_dead = _dead_letter_models(outputs["TrainingDeadLetterQueueUrl"], _model_of_job)
    report: dict[str, Any] = {
        "stack": stack_name,
        "queues": {
            "ingest": _queue_counts(outputs["IngestQueueUrl"], outputs["IngestDeadLetterQueueUrl"]),
            "training": _queue_counts(outputs["TrainingQueueUrl"], outputs["TrainingDeadLetterQueueUrl"]),
        },
        "release": stack_parameter(stack_name, "ReleaseVersion"),
        "trainers": _trainers(stack_name, outputs["ProcessedBucketName"]),
        "server": _server(outputs.get("ServingInstanceId"), api_url),
        "api": api_url,
    }
    # Outside any one model's block: a notification names its model only in its event, and a batch
    # file's model only in its key; what matters here is that something waits for a redrive.
    unsent = {
        "notifications": _depth(outputs["NotificationDeadLetterQueueUrl"]),
        "batch_files": _depth(outputs["BatchDeadLetterQueueUrl"]),
    }
    report["unsent"] = unsent
    report["problems"] = _stack_problems(unsent)
    api_key = _api_key_or_none(stack_name) if api_url else None
    registry_error, registered = _registered_models()
    if registry_error:
        report["registry_error"] = registry_error
    names = sorted(set(contract_models(stack_name)) | set(registered) | set(ingest_dead) | set(training_dead))
    report["models"] = [
        _model_status(
            name,
            outputs,
            api_url,
            api_key,
            ingest_dead_letters=len(ingest_dead.get(name, [])),
            training_dead_letters=len(training_dead.get(name, [])),
            training_failure=next(iter(training_dead.get(name, [])), None),
            registry_up=not registry_error,
        )
        for name in names
    ]
    return report


def _depth(queue_url: str) -> int:
    attributes = sqs.sqs_client().get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def _stack_problems(unsent: dict[str, int]) -> list[str]:
    problems = []
    if unsent["notifications"]:
        problems.append(
            f"{unsent['notifications']} notification(s) could not be sent (the topic or its subscriptions): "
            "once fixed, `arrival redrive notify`"
        )
    if unsent["batch_files"]:
        problems.append(
            f"{unsent['batch_files']} batch file(s) dead-lettered, each with a failure.json beside it: "
            "once fixed, `arrival redrive batch`"
        )
    return problems


def _queue_counts(queue_url: str, dead_letter_url: str) -> dict[str, int]:
    attributes = sqs.sqs_client().get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    dead = sqs.sqs_client().get_queue_attributes(
        QueueUrl=dead_letter_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return {
        "queued": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "dead_letters": int(dead.get("ApproximateNumberOfMessages", 0)),
    }


def _model_of_s3_event(body: str) -> str | None:
    """The model a dead-lettered S3 notification was for: its key's first segment."""
    from urllib.parse import unquote_plus

    try:
        records = json.loads(body).get("Records", [])
        return unquote_plus(records[0]["s3"]["object"]["key"]).split("/", 1)[0] if records else None
    except (ValueError, KeyError, IndexError, AttributeError):
        return None


def _model_of_job(body: str) -> str | None:
    try:
        return str(json.loads(body)["model"])
    except (ValueError, KeyError, TypeError):
        return None


def _dead_letter_models(queue_url: str, model_of: Any) -> dict[str, list[str | None]]:
    """Dead-lettered messages by model, each as the failure reason it carries (None without one),
    read without taking them off the queue."""
    reasons: dict[str, list[str | None]] = {}
    for message in sqs.peek(queue_url, DEAD_LETTERS_PEEKED):
        reason = message.get("MessageAttributes", {}).get("failure_reason", {}).get("StringValue")
        reasons.setdefault(model_of(message["Body"]) or "(unknown)", []).append(reason)
    return reasons


def _trainers(stack_name: str, processed_bucket: str) -> list[dict[str, Any]]:
    """Every live trainer, with the model its heartbeat says it trains (None: none now)."""
    from common.adapters import ec2
    from common.reconcile import TRAINER_ROLE, read_heartbeat

    now = time.time()
    trainers = []
    for instance in ec2.live_instances_launched(TRAINER_ROLE, stack_name):
        heartbeat = read_heartbeat(processed_bucket, instance.instance_id)
        trainers.append(
            {
                "instance_id": instance.instance_id,
                "running_seconds": round(now - instance.launched_at),
                "release": ec2.instance_release(instance.instance_id),
                "training": heartbeat.model if heartbeat else None,
            }
        )
    return trainers


def _server(instance_id: str | None, api_url: str | None) -> dict[str, Any] | None:
    """The serving instance and the release it runs: its user data reads the stack's release at its
    first boot, so only the server itself can say which (its /health)."""
    if not instance_id:
        return None
    return {"instance_id": instance_id, "release": _health(api_url).get("release")}


def _health(api_url: str | None) -> dict[str, Any]:
    """The API's /health (it needs no key), or nothing if there is no API or it does not answer."""
    if not api_url:
        return {}
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=3) as response:  # noqa: S310
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _registered_models() -> tuple[str | None, list[str]]:
    from mlflow.exceptions import MlflowException

    from common.adapters import tracking

    try:
        return None, tracking.registered_models()
    except (MlflowException, OSError, tracking.NoTrackingServerError) as error:
        return f"the model registry does not answer ({str(error).splitlines()[0][:200]})", []


def _model_status(
    name: str,
    outputs: dict[str, str],
    api_url: str | None,
    api_key: str | None,
    *,
    ingest_dead_letters: int,
    training_dead_letters: int,
    training_failure: str | None = None,
    registry_up: bool,
) -> dict[str, Any]:
    from common.drift import live_summary_key  # pandas and numpy: only once there is a model to show

    contract = s3.get_bytes(outputs["ConfigBucketName"], contract_key(name))
    metric, contract_error = None, None
    if contract:
        # One model's broken contract is that model's problem, not a crash of the whole status.
        try:
            metric = parse_contract(contract[0]).training.metric
        except (yaml.YAMLError, ValidationError) as error:
            contract_error = str(error).splitlines()[0][:200]
    accepted = s3.get_bytes(outputs["ProcessedBucketName"], accepted_list_key(name))
    datasets = json.loads(accepted[0])["datasets"] if accepted else []
    versions = _versions(name, metric) if registry_up else []
    # From the alias itself: the champion may be older than every version shown.
    champion = _champion(name) if registry_up else None
    pointer, pointer_error = _pointer(outputs["ModelsBucketName"], name)
    served, pending = _served_version(api_url, api_key, name) if pointer or pointer_error else (None, None)
    live = s3.get_bytes(outputs["ModelsBucketName"], live_summary_key(name))
    status = {
        "name": name,
        "contract": contract is not None,
        "contract_error": contract_error,
        "metric": metric,
        "datasets": {
            "accepted": len(datasets),
            "rows": sum(int(entry.get("rows", 0)) for entry in datasets),
            "quarantined": _quarantined_by_rule(outputs["QuarantineBucketName"], name),
        },
        "jobs": {
            "ingest_dead_letters": ingest_dead_letters,
            "training_dead_letters": training_dead_letters,
            # One job's reason, so the line says why (an AccessDenied names the action and role).
            "training_failure": training_failure,
        },
        "versions": versions,
        "awaiting_approval": [v["version"] for v in versions if v["decision"] == "awaiting approval"],
        "champion": champion,
        # `pending`: the server's own word on a version it has not loaded yet (serving/store.py).
        "serving": {"pointer": pointer, "pointer_error": pointer_error, "api": served, "pending": pending},
        "live_drift": _live_drift(json.loads(live[0])) if live else None,
    }
    status["problems"] = _problems(status, registry_up)
    return status


def _champion(name: str) -> str | None:
    from common.adapters import tracking

    found = tracking.champion(name)
    return found.version if found else None


def _pointer(bucket: str, name: str) -> tuple[str | None, str | None]:
    """The version the serving pointer names, or why it cannot be read."""
    from common.bundles import ServingPointer, pointer_key

    found = s3.get_bytes(bucket, pointer_key(name))
    if found is None:
        return None, None
    try:
        return ServingPointer.model_validate_json(found[0]).version, None
    except ValidationError as error:
        return (
            None,
            f"s3://{bucket}/{pointer_key(name)} is not a serving pointer ({str(error).splitlines()[0]})",
        )


def _live_drift(latest: dict[str, Any]) -> dict[str, Any]:
    """The scheduled report's verdict on live traffic (common/monitoring.py writes it)."""
    return {
        "version": latest.get("version"),
        "drifted_columns": list(latest.get("drifted_columns", [])),
        "generated_at": latest.get("generated_at"),
        "report": latest.get("report"),
    }


def _quarantined_by_rule(bucket: str, model: str) -> dict[str, int]:
    from common.layout import REPORT_SUFFIX

    reports = [key for key, _ in s3.list_objects(bucket, f"{model}/") if key.endswith(REPORT_SUFFIX)]
    counts: Counter[str] = Counter()
    for key in reports[-REPORTS_READ:]:
        found = s3.get_bytes(bucket, key)
        counts[json.loads(found[0]).get("rule", "unknown") if found else "unknown"] += 1
    if len(reports) > REPORTS_READ:
        counts["(not read)"] = len(reports) - REPORTS_READ
    return dict(counts)


def _versions(name: str, metric: str | None) -> list[dict[str, Any]]:
    from common.adapters import tracking

    shown = []
    for version in tracking.version_summaries(name, VERSIONS_SHOWN):
        decision, reason = next(
            ((state, version.tags[tag]) for tag, state in DECISION_TAGS if tag in version.tags),
            ("training" if "gate.decision" not in version.tags else "deciding", ""),
        )
        if ROLLED_BACK in version.tags:  # pulled from serving: say so, and where to
            decision, reason = f"{decision}, rolled back", version.tags[ROLLED_BACK]
        metrics = tracking.run_metrics(version.run_id)
        shown.append(
            {
                "version": version.version,
                "aliases": version.aliases,
                "metric": {metric: metrics.get(metric)} if metric else {},
                "decision": decision,
                "reason": reason,
                # The trainer's report on this version's new data against its champion's.
                "drift": version.tags.get("drift.status", ""),
                "drifted_columns": _json_list(version.tags.get("drift.drifted_columns", "[]")),
                "created_ms": version.created_ms,
            }
        )
    return shown


def _json_list(text: str) -> list[str]:
    """A tag holding a JSON list (cut to fit by the trainer, in which case it may not parse)."""
    try:
        found = json.loads(text)
    except ValueError:
        return [text]
    return [str(item) for item in found] if isinstance(found, list) else [text]


def _api_key_or_none(stack_name: str) -> str | None:
    """The stack's API key, or None if it cannot be read (status then shows no served version)."""
    from cli.target import TargetError, api_key_for_stack

    try:
        return api_key_for_stack(stack_name)
    except TargetError:
        return None


def _served_version(
    api_url: str | None, api_key: str | None, model: str
) -> tuple[str | None, dict[str, Any] | None]:
    """The version the API answers with, and what it says of a newer one it has not loaded (why,
    and when it tries again); nothing if no API or key is known or it does not answer."""
    if not api_url or api_key is None:
        return None, None
    request = urllib.request.Request(  # noqa: S310  # the operator's own API
        f"{api_url.rstrip('/')}/models/{model}", headers={"x-api-key": api_key}
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503: no version loaded, and why
        try:
            answer = json.loads(error.read())
        except ValueError:
            return None, None
        pending = answer.get("pending") if isinstance(answer, dict) else None
        return None, pending if isinstance(pending, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None, None
    if not isinstance(answer, dict):
        return None, None
    pending = answer.get("pending")
    return str(answer.get("version")), pending if isinstance(pending, dict) else None


def _failure_in_brief(reason: str) -> str:
    """A dead letter's reason on one line: its first line, and for a recipe's failure, which carries
    its traceback, the traceback's last lines too (where in the recipe, and the error)."""
    lines = [" ".join(line.split()) for line in reason.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines[0][:300]
    return f"{lines[0][:300]} ... {' | '.join(lines[-3:])[:300]}"


def _problems(status: dict[str, Any], registry_up: bool) -> list[str]:
    """What an operator should look at, each with what to do."""
    name, pointer, served = status["name"], status["serving"]["pointer"], status["serving"]["api"]
    problems = []
    if not status["contract"]:
        problems.append(f"no contract: uploads are quarantined; `arrival contract put {name}.yaml`")
    elif status["contract_error"]:
        problems.append(
            f"the contract is not valid ({status['contract_error']}): uploads fail until it is; "
            f"fix it, then `arrival contract put {name}.yaml`"
        )
    if status["serving"]["pointer_error"]:
        problems.append(
            f"{status['serving']['pointer_error']}: serving keeps its last good version; "
            f"`arrival rollback --model {name} --to <version>` writes a good one"
        )
    elif registry_up and pointer != status["champion"]:
        problems.append(
            f"serving pointer (version {pointer}) and champion alias (version {status['champion']}) "
            f"disagree: a change was cut short; `arrival rollback --model {name} --to {pointer}` "
            "finishes it"
            if pointer
            else f"serving pointer (none) and champion alias (version {status['champion']}) disagree; "
            f"`arrival rollback --model {name} --to {status['champion']}` sets both"
        )
    pending = status["serving"].get("pending")
    if pointer and served != pointer and pending:
        answers = f"the API still answers with version {served}" if served else "the API answers no version"
        problems.append(
            f"{answers}, not {pointer}: {pending.get('cause')}, {pending.get('reason')} "
            f"(next try: {pending.get('next_try')})"
        )
    elif pointer and served and served != pointer:
        problems.append(
            f"the API still answers with version {served}, not {pointer} (it reloads within seconds)"
        )
    live = status["live_drift"]
    if live and live["drifted_columns"]:
        problems.append(
            f"live traffic drifted from version {live['version']}'s training data in "
            f"{', '.join(live['drifted_columns'])} ({live['generated_at']}): `arrival drift --model {name}`"
        )
    dead = status["jobs"]
    if dead["ingest_dead_letters"]:
        problems.append(
            f"{dead['ingest_dead_letters']} file(s) dead-lettered in ingest: `arrival logs ingest`, "
            "then `arrival redrive ingest`"
        )
    if dead["training_dead_letters"]:
        reason = dead.get("training_failure")
        because = f" ({_failure_in_brief(reason)})" if reason else ""
        problems.append(
            f"{dead['training_dead_letters']} training job(s) dead-lettered{because}: "
            "`arrival logs trainer`, then `arrival redrive training`"
        )
    return problems


def stack_status_or_reason(stack_name: str, api_url: str | None) -> dict[str, Any]:
    """The stack's status, or {"error": ...} saying in one line why it cannot be read."""
    try:
        return stack_status(stack_name, api_url)
    except OperationError as error:
        return {"stack": stack_name, "error": str(error)}
    except (ClientError, BotoCoreError) as error:
        return {"stack": stack_name, "error": f"the cloud does not answer ({error})"}
