"""Beat's alert rules and the webhook deliveries they cause."""
from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="ops.check_rules", soft_time_limit=60, time_limit=90)
def check_rules() -> dict:
    from ops import rules, webhooks

    counts = rules.check()
    counts["requeued"] = webhooks.requeue_stale()
    if any(counts.values()):
        log.info("alert rules: %(fired)d fired, %(resolved)d resolved; %(requeued)d webhook deliveries queued again",
                 counts)
    return counts


# WEBHOOK_TIMEOUT_SECONDS (at most 20) bounds each phase of a POST (connect, write, read): within the soft limit.
@shared_task(name="ops.deliver_webhook", soft_time_limit=120, time_limit=150)
def deliver_webhook(delivery_id: int, done: int) -> None:
    """Attempt number done + 1; the next one, if any, is queued with its back-off as the countdown."""
    from ops import webhooks

    delay = webhooks.attempt(delivery_id, done)
    if delay is not None:
        deliver_webhook.apply_async((delivery_id, done + 1), countdown=delay)
