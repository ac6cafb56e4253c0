"""Alerts out to the tools people already watch (Slack, PagerDuty, a bot of their own), as signed JSON POSTs.

When an alert fires or resolves (governance.models.alert_changed, sent after its commit), each active endpoint that
wants its kind gets a WebhookDelivery row with the exact body, and a Celery task (queue `default`) posts it: nothing
waits for a receiver, neither a request nor the rule or canary check that raised the alert. A failure (no answer
within WEBHOOK_TIMEOUT_SECONDS, a refused connection, a 5xx, a 408 or a 429) is tried again after
WEBHOOK_RETRY_SECONDS, doubling each time, until WEBHOOK_MAX_ATTEMPTS attempts; another 4xx is final (the receiver
refuses this message). Every attempt is a row the delivery log page shows.

The body is JSON: `text` (what Slack shows) plus `event`, `alert` (id, kind, subject, level, message, details,
created_at, resolved_at) and `sent_at`. It is signed with HMAC-SHA256 under the endpoint's secret; the receiver
recomputes `sha256=` + hex digest of the raw body and compares it with the X-Sopweb-Signature header.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.models import Alert
from ops.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sopweb-Signature"
RETRIED_STATUSES = {408, 429}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does (and the tests): the signature of these exact bytes under the shared secret."""
    return hmac.compare_digest(sign(secret, body), signature or "")


def alert_body(alert: Alert, event: str) -> str:
    verb = "RESOLVED" if event == WebhookDelivery.Event.RESOLVED else alert.level.upper()
    return json.dumps({
        "text": f"[sopweb {verb}] {alert.get_kind_display()}{f' — {alert.subject}' if alert.subject else ''}: "
                f"{alert.message}",
        "event": event,
        "alert": {"id": alert.pk, "kind": alert.kind, "subject": alert.subject, "level": alert.level,
                  "message": alert.message, "details": alert.details,
                  "version": alert.version.number if alert.version_id else None,
                  "created_at": alert.created_at.isoformat(),
                  "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None},
        "sent_at": timezone.now().isoformat(),
    }, sort_keys=True, default=str)


def test_body(endpoint: WebhookEndpoint, user) -> str:
    return json.dumps({"text": f"[sopweb TEST] A test message to webhook {endpoint.name}, sent by {user}.",
                       "event": "test", "alert": None, "sent_at": timezone.now().isoformat()}, sort_keys=True)


def alert_changed(sender, alert: Alert, change: str, **kwargs) -> None:
    """governance.models.alert_changed: one delivery per endpoint that wants this kind."""
    for endpoint in WebhookEndpoint.objects.filter(active=True):
        if endpoint.wants(alert.kind):
            enqueue(endpoint, alert_body(alert, change), event=change, alert=alert)


def enqueue(endpoint: WebhookEndpoint, body: str, *, event: str, alert: Alert | None = None) -> WebhookDelivery:
    from ops.tasks import deliver_webhook

    delivery = WebhookDelivery.objects.create(endpoint=endpoint, alert=alert, event=event, body=body)
    # robust: a broker that refuses the message must not fail whoever raised the alert; the stale sweep
    # (requeue_stale, run with the alert rules) sends it once the broker answers.
    transaction.on_commit(lambda: deliver_webhook.delay(delivery.pk, 0), robust=True)
    return delivery


STALE_AFTER = timedelta(minutes=2)


def requeue_stale() -> int:
    """Pending deliveries nobody is working on (their message was lost: the broker refused it, or a worker died
    in the middle of an attempt) are queued again; an attempt claimed but never recorded is given back. Run with
    the alert rules. Returns how many were queued."""
    from django.db.models import Max

    from ops.tasks import deliver_webhook

    now = timezone.now()
    queued = 0
    pending = (WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, created_at__lt=now - STALE_AFTER)
               .annotate(last_start=Max("attempt_rows__started_at"), last_retry=Max("attempt_rows__retry_at")))
    for delivery in pending:
        latest = max(filter(None, (delivery.created_at, delivery.last_start, delivery.last_retry)))
        if latest > now - STALE_AFTER:
            continue  # an attempt or its back-off is in progress
        recorded = delivery.attempt_rows.count()
        if WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING,
                                          attempts=delivery.attempts).update(attempts=recorded):
            deliver_webhook.delay(delivery.pk, recorded)
            queued += 1
    return queued


def attempt(delivery_id: int, done: int) -> float | None:
    """Make attempt number done + 1 of the delivery, if it is still pending with `done` attempts made (a repeated
    task message does nothing). Returns the seconds until the next attempt, or None when there is none."""
    import httpx

    if _fired_still_pending(delivery_id):
        return settings.WEBHOOK_RETRY_SECONDS  # a resolution waits for its firing: receivers hear them in order
    claimed = WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING,
                                             attempts=done).update(attempts=done + 1)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint, number, body = delivery.endpoint, done + 1, delivery.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "sopweb-webhooks/1",
               SIGNATURE_HEADER: sign(endpoint.secret, body), "X-Sopweb-Event": delivery.event,
               "X-Sopweb-Delivery": str(delivery.pk)}
    row = WebhookAttempt(delivery=delivery, number=number)
    start = time.perf_counter()
    asked_delay = 0.0
    try:
        response = httpx.post(endpoint.url, content=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                              follow_redirects=False)
        row.status_code = response.status_code
        retry = response.status_code >= 500 or response.status_code in RETRIED_STATUSES
        if not 200 <= response.status_code < 300:
            # Its status only: what a receiver answers is not shown to people (it may be any service's page).
            row.error = f"the receiver answered {response.status_code}"
            asked_delay = _retry_after(response.headers.get("Retry-After"))
    except Exception as exc:  # noqa: BLE001 — no answer, whatever the reason, is a failed attempt to try again
        row.error = (f"{type(exc).__name__}: {exc}"[:500]).replace(endpoint.url, endpoint.shown_url)
        retry = True
    row.duration_ms = round((time.perf_counter() - start) * 1000, 1)
    delay = None
    if row.ok:
        status = WebhookDelivery.Status.DELIVERED
    elif retry and number < settings.WEBHOOK_MAX_ATTEMPTS:
        delay = max(settings.WEBHOOK_RETRY_SECONDS * 2 ** (number - 1), asked_delay)
        status = WebhookDelivery.Status.PENDING
        row.retry_at = timezone.now() + timedelta(seconds=delay)
    else:
        status = WebhookDelivery.Status.FAILED
    with transaction.atomic():
        row.save()
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=status, finished_at=None if status == WebhookDelivery.Status.PENDING else timezone.now())
    log.info("webhook %s delivery %s attempt %d: %s", endpoint.name, delivery.pk, number,
             row.status_code or row.error, extra={"webhook": endpoint.name})
    return delay


def _retry_after(value: str | None) -> float:
    """A 429's or 503's Retry-After in seconds (at most an hour); 0 when absent or a date (not honoured)."""
    try:
        return min(max(float(value), 0.0), 3600.0) if value else 0.0
    except ValueError:
        return 0.0


def _fired_still_pending(delivery_id: int) -> bool:
    """A resolution's delivery whose alert's firing, to the same endpoint, has not finished yet."""
    delivery = WebhookDelivery.objects.filter(pk=delivery_id, event=WebhookDelivery.Event.RESOLVED).first()
    return delivery is not None and delivery.alert_id is not None and WebhookDelivery.objects.filter(
        endpoint_id=delivery.endpoint_id, alert_id=delivery.alert_id, event=WebhookDelivery.Event.FIRED,
        status=WebhookDelivery.Status.PENDING).exists()
