"""Reconciler Lambda: start trainers for queued training that no running trainer is free to take (up
to MaxTrainers), and end trainers that stopped renewing their heartbeat. Invoked on a schedule and,
asynchronously, by the ingest function after it queues a job; the event says only why, so it is not
read."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from common.observability import logger, tracer
from common.reconcile import ensure_trainers
from common.settings import get_pipeline_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcome = ensure_trainers(get_pipeline_settings())
    logger.info("reconciled trainers", extra=asdict(outcome))
    return asdict(outcome)
