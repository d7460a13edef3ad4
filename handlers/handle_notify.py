"""Notify Lambda: every pipeline event on the bus (an EventBridge rule) becomes a message on the
notification topic. A failed publish fails the invocation: Lambda retries it, then hands the event with
its error to the notification dead-letter queue."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.adapters import notify
from common.notifications import notification_for
from common.observability import logger, tracer
from common.settings import get_notify_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    settings = get_notify_settings()
    notification = notification_for(event.detail_type, event.detail, settings.stack_name)
    if notification.problem:
        logger.warning(
            "event shown whole", extra={"detail_type": event.detail_type, "problem": notification.problem}
        )
    message_id = notify.publish(settings.notification_topic_arn, notification)
    logger.info("notified", extra={"detail_type": event.detail_type, "subject": notification.subject})
    return {"message_id": message_id, "subject": notification.subject}
