"""Reconciler Lambda, on a schedule: start a trainer if training is queued and none runs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.observability import logger, tracer
from common.reconcile import ensure_trainer
from common.settings import get_pipeline_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    outcome = ensure_trainer(get_pipeline_settings())
    logger.info("reconciled trainers", extra=asdict(outcome))
    return asdict(outcome)
