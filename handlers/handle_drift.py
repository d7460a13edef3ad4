"""Drift Lambda: on its schedule, each champion's captured live traffic against its training data."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from common.monitoring import DriftRequest, report_live_drift
from common.observability import logger, tracer
from common.settings import get_monitoring_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = DriftRequest.model_validate(event)
    outcomes = report_live_drift(get_monitoring_settings(), request.models)
    return {"models": [asdict(outcome) for outcome in outcomes]}
