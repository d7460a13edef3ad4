"""Sweep Lambda: on its schedule, re-queue raw objects whose S3 notification never reached ingest.
The event says only that the schedule fired, so it is not read."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from common.observability import logger, tracer
from common.settings import get_sweep_settings
from common.sweep import run_sweep


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = run_sweep(
        get_sweep_settings(), time.time(), lambda: context.get_remaining_time_in_millis() / 1000
    )
    return asdict(report)
