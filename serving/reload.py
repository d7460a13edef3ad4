"""How a reload hint reaches every serving instance, and every worker process of each.

**Every instance.** The event bus sends `ModelPromoted` and `ModelRolledBack` to the stack's reload
topic (SNS). Each instance subscribes a queue of its own to it (`ReloadSubscription`): a queue named
from the topic and the instance's id, created at the server's start if it is not there, removed when
the server stops. A queue shared by several instances would hand each message to one of them only.

**Every worker.** `arrival-serve` runs one uvicorn worker process per core (serving/main.py), each
holding every model. SQS hands a message to one receiver only, so if each worker read the instance's
reload queue, a promotion would reach one worker at once and the others at their next poll. Instead,
exactly one
process per instance reads the queue: arrival-serve's parent, uvicorn's supervisor, which holds no
model and answers no request. On each message it bumps a generation number in a small file
(serving/reload_signal.py), and every worker reads that file every `SIGNAL_CHECK_SECONDS` and
refreshes when it changed (ModelStore.start_background). This module is the supervisor's side, and
the only one that talks to SNS and SQS: the workers, and the Lambda function, import only the signal.

Why the parent, and a file:
- the parent exists once per instance whatever the number of workers, and outlives them (uvicorn
  starts a dead worker again), so nothing needs electing and no hint is lost while a worker restarts;
- a worker that starts after a bump refreshes at its start anyway, so the file holds no history to
  replay, only "something moved since you last looked";
- reading a 20-byte file 20 times a second costs each worker microseconds, and needs nothing shared
  across `spawn`ed processes but a path (uvicorn starts its workers with multiprocessing's spawn, so a
  lock or a shared-memory object would have to be rebuilt by name anyway);
- one queue per worker would multiply the subscriptions by the cores, and a worker's queue would have
  to outlive the worker's restarts under a name the worker cannot know before it starts.

The pointer poll every `poll_seconds` stays each worker's safety net for a lost message or file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
from collections.abc import Callable

from common.adapters import sns, sqs
from common.adapters.instance import own_instance_id

LOG = logging.getLogger("arrival.serving")
MAX_BACKOFF_SECONDS = 30.0
# A server that was down reads every pointer when it starts: older events are of no use to it.
RELOAD_QUEUE_RETENTION_SECONDS = 3600
MAX_QUEUE_NAME = 80  # SQS's limit


def reload_queue_name(topic_arn: str, member: str) -> str:
    """`<topic name>-<member>`: the ServingRole may create, read and delete the queues named
    `<stack>-serving-reload-*` only, and the topic is `<stack>-serving-reload` (template.yaml)."""
    topic_name = topic_arn.rsplit(":", 1)[-1]
    name = f"{topic_name}-{re.sub(r'[^A-Za-z0-9_-]', '-', member)}"
    if len(name) > MAX_QUEUE_NAME:
        raise ValueError(
            f"the reload queue's name {name!r} is longer than SQS's {MAX_QUEUE_NAME} characters: "
            "use a shorter stack name"
        )
    return name


def member_name() -> str:
    """What tells this server's queue from its peers': its instance's id (from the instance metadata
    service), or, off EC2 (a container, a developer's machine), its host's name and process id."""
    return own_instance_id() or f"{socket.gethostname()}-{os.getpid()}"


class ReloadSubscription:
    """This instance's own queue on the stack's reload topic. `open` is safe to call again (the queue
    and the subscription are looked up by name and endpoint), `close` removes both."""

    def __init__(self, topic_arn: str, member: Callable[[], str] = member_name) -> None:
        self.topic_arn = topic_arn
        # Asked at the first open, in the reader's thread: off EC2 the metadata service's timeouts
        # take seconds, which the server's start need not wait for.
        self._member = member
        self.queue_name: str | None = None
        self.queue_url: str | None = None
        self.subscription_arn: str | None = None

    def _queue_arn(self, queue_name: str) -> str:
        # The queue is in the topic's account and region, so its ARN is known before it exists, and
        # its policy can name it.
        partition, _, region, account = self.topic_arn.split(":")[1:5]
        return f"arn:{partition}:sqs:{region}:{account}:{queue_name}"

    def open(self) -> str:
        """The queue's URL, once the queue exists, lets the topic send to it, and is subscribed."""
        if self.queue_name is None:
            self.queue_name = reload_queue_name(self.topic_arn, self._member())
        queue_arn = self._queue_arn(self.queue_name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": self.topic_arn}},
                }
            ],
        }
        attributes = {
            "MessageRetentionPeriod": str(RELOAD_QUEUE_RETENTION_SECONDS),
            "Policy": json.dumps(policy),
        }
        queue_url = sqs.ensure_queue(self.queue_name, attributes)
        self.subscription_arn = sns.subscribe_queue(self.topic_arn, queue_arn)
        self.queue_url = queue_url
        LOG.info(
            "reload queue subscribed: queue=%s topic=%s",
            self.queue_name,
            self.topic_arn,
            extra={"queue": self.queue_name, "topic": self.topic_arn},
        )
        return queue_url

    def close(self) -> None:
        """Unsubscribe, then delete the queue; a failure is logged, not raised: the server is stopping.
        (A server that dies without stopping leaves both behind: see docs/serving.md.)"""
        if self.subscription_arn is not None:
            try:
                sns.unsubscribe(self.subscription_arn)
                self.subscription_arn = None
            except Exception:  # best effort on the way out
                LOG.exception("could not unsubscribe %s", self.subscription_arn)
        if self.queue_url is not None:
            try:
                sqs.delete_queue(self.queue_url)
                self.queue_url = None
            except Exception:  # best effort on the way out
                LOG.exception("could not delete the reload queue %s", self.queue_url)


class QueueListener:
    """Opens the instance's reload queue, then long-polls it in a thread and calls `on_hint` once per
    batch of messages, then deletes them: a message is only a hint that some pointer moved (the
    workers' listing says which), and a worker that misses one still has its poll. Opening is retried
    with the same backoff as a failed receive (SQS refuses, for 60 s, a queue of the name of one just
    deleted: a server restarted at once waits that long for its queue, and polls meanwhile)."""

    def __init__(
        self, open_queue: Callable[[], str], on_hint: Callable[[], object], *, wait_seconds: int = 5
    ) -> None:
        self.open_queue = open_queue
        self.on_hint = on_hint
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        # A daemon: it holds nothing, and must never keep a dying process alive.
        self._thread = threading.Thread(target=self._follow, name="reload-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _follow(self) -> None:
        failures = 0
        queue_url: str | None = None
        while not self._stop.is_set():
            try:
                if queue_url is None:
                    queue_url = self.open_queue()
                    # An event published before the subscription existed reached no queue of ours.
                    self.on_hint()
                messages = sqs.receive(queue_url, wait_seconds=self.wait_seconds, visibility_seconds=30)
                if messages:
                    self.on_hint()
                    for message in messages:
                        sqs.delete(queue_url, message["ReceiptHandle"])
                failures = 0
            except Exception:  # the thread must outlive any one failure; it backs off and retries
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * random.uniform(0.5, 1)  # noqa: S311
                LOG.exception("reload queue failed: retrying in %.1fs", delay, extra={"queue_url": queue_url})
                self._stop.wait(delay)
