"""Batch Lambda: SQS batches of S3 notifications from the inference bucket; one failing record fails alone."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.batch import BatchObject, score_notification
from common.observability import logger, metrics, tracer


def batch_record(record: SQSRecord, lambda_context: LambdaContext) -> None:
    # S3 sends an s3:TestEvent when notifications are configured; it has no Records.
    s3_records = S3Event(record.json_body).records if "Records" in record.json_body else []
    sources = [
        BatchObject(r.s3.bucket.name, unquote_plus(r.s3.get_object.key), r.s3.get_object.version_id)
        for r in s3_records
    ]
    attempts = int(record.attributes.approximate_receive_count)
    score_notification(
        sources, record.body, attempts, lambda: lambda_context.get_remaining_time_in_millis() / 1000
    )


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=batch_record, processor=processor, context=context
    )
