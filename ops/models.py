"""Outgoing webhooks: where supervisors want alerts sent, and the record of every delivery and attempt."""
from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.models import Alert


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    """A URL that receives alerts as signed JSON POSTs (Slack-compatible: a `text` field, plus structured ones).

    The secret signs each body (HMAC-SHA256, header X-Sopweb-Signature). It is stored as it is, because signing
    needs it, and shown once, when it is made; pages show only its last four characters. The URL can be a secret
    too (a Slack incoming-webhook URL is one), so pages and logs show only its scheme and host."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    kinds = models.JSONField(default=list, help_text="The alert kinds sent here (governance.Alert.Kind values).")
    secret = models.CharField(max_length=200, default=new_secret)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]
        permissions = [("manage_webhooks", "Can configure outgoing webhooks and read their delivery log")]

    def __str__(self) -> str:
        return f"webhook {self.name}"

    @property
    def shown_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"

    @property
    def secret_hint(self) -> str:
        return "…" + self.secret[-4:]

    def wants(self, kind: str) -> bool:
        return self.active and kind in self.kinds

    def kind_labels(self) -> list[str]:
        labels = dict(Alert.Kind.choices)
        return [labels.get(kind, kind) for kind in self.kinds]


class WebhookDelivery(models.Model):
    """One message to one endpoint (an alert firing or resolving, or a test), tried until it is delivered or
    WEBHOOK_MAX_ATTEMPTS attempts failed. `body` is the exact bytes signed and sent."""

    class Event(models.TextChoices):
        FIRED = "fired", "fired"
        RESOLVED = "resolved", "resolved"
        TEST = "test", "test"

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    alert = models.ForeignKey(Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    event = models.CharField(max_length=16, choices=Event.choices)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["endpoint", "-created_at"])]

    def __str__(self) -> str:
        return f"delivery {self.pk} to {self.endpoint.name}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: what the receiver answered, or why there was no answer."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When the next attempt is due, if any.")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="one_row_per_attempt")]

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
