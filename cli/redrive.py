"""`arrival redrive`: move a stage's dead-lettered messages back once their cause is fixed."""

from __future__ import annotations

import json

from cli.operations import OperationError, outputs_of

# Each stage's dead-letter queue and the queue its messages are replayed to (stack outputs).
REDRIVE_QUEUES = {
    "ingest": ("IngestDeadLetterQueueUrl", "IngestQueueUrl"),
    "training": ("TrainingDeadLetterQueueUrl", "TrainingQueueUrl"),
    "batch": ("BatchDeadLetterQueueUrl", "BatchQueueUrl"),
}


REDRIVE_STAGES = [*REDRIVE_QUEUES, "notify"]


def redrive(stage: str, stack_name: str) -> int:
    """Moves a stage's dead-lettered messages back to its queue (after the cause is fixed): the
    ingest function takes the files again, a trainer the jobs. Returns how many moved."""
    from common.adapters import sqs

    if stage not in REDRIVE_STAGES:
        raise OperationError(f"unknown stage {stage!r}; redrive one of: {', '.join(REDRIVE_STAGES)}")
    outputs = outputs_of(stack_name)
    if stage == "notify":
        return _renotify(outputs["NotificationDeadLetterQueueUrl"], outputs["NotifyFunctionName"])
    dead_letters, queue = (outputs[name] for name in REDRIVE_QUEUES[stage])
    fifo_group = (lambda body: str(json.loads(body)["model"])) if stage == "training" else None
    return sqs.move_all(dead_letters, queue, fifo_group=fifo_group)


def _renotify(dead_letters: str, notify_function: str) -> int:
    """The notifier's dead letters are the bus's events it could not send, and no queue feeds it (the
    bus invokes it): each event goes to the function again, synchronously, and leaves the dead-letter
    queue once it was sent. The first that fails again stops the redrive, and it and the rest stay."""
    from common.adapters import functions, sqs

    sent = 0
    while batch := sqs.receive(dead_letters, wait_seconds=1, visibility_seconds=60):
        for position, message in enumerate(batch):
            try:
                functions.invoke(notify_function, json.loads(message["Body"]))
            except (functions.FunctionFailedError, json.JSONDecodeError) as error:
                for kept in batch[position:]:
                    sqs.extend_visibility(dead_letters, kept["ReceiptHandle"], 0)
                cause = (
                    f"message {message['MessageId']} is not an event: {error}"
                    if isinstance(error, json.JSONDecodeError)
                    else f"the notifier failed again ({error})"
                )
                raise OperationError(
                    f"{cause}; {sent} event(s) sent before it, the rest are still in the notify "
                    "dead-letter queue: `arrival logs` names the cause"
                ) from None
            sqs.delete(dead_letters, message["ReceiptHandle"])
            sent += 1
    return sent
