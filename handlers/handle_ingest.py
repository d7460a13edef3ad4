"""Ingest Lambda: SQS batches of S3 notifications from the raw bucket; one failing record fails alone."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.ingest import dead_letter_if_last_delivery, ingest_object, prepare_invocation
from common.observability import logger, metrics, tracer
from common.outcomes import RawObject


def ingest_record(record: SQSRecord) -> None:
    metrics.add_metric(name="NotificationsProcessed", unit=MetricUnit.Count, value=1)
    try:
        # S3 sends an s3:TestEvent when notifications are configured; it has no Records.
        for s3_record in S3Event(record.json_body).records if "Records" in record.json_body else []:
            key = unquote_plus(s3_record.s3.get_object.key)
            logger.set_correlation_id(f"s3://{s3_record.s3.bucket.name}/{key}")
            ingest_object(RawObject(s3_record.s3.bucket.name, key, s3_record.s3.get_object.version_id))
    except Exception as error:
        attempts = int(record.attributes.approximate_receive_count)
        if not dead_letter_if_last_delivery(record.body, attempts, error):
            raise  # delivered again later


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    prepare_invocation(context)
    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=ingest_record, processor=processor, context=context
    )
