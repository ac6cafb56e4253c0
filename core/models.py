"""The audit trail every app writes: who did what to which object, when, why, and the figures they saw."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """Who did what to which object, when, why, and the figures they saw. Also the outbox for live events."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    verb = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)  # app_label.model
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "fleet_auditevent"  # moved from fleet with its table (core/migrations/0001)
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-created_at"]),
            models.Index(fields=["verb", "-created_at"]),
        ]

    def __str__(self) -> str:
        who = self.actor.get_username() if self.actor_id else "system"
        return f"{who} {self.verb} {self.object_repr}"

    @classmethod
    def record(cls, actor, verb: str, obj: models.Model, *, reason: str = "", details: dict | None = None):
        return cls.objects.create(
            actor=actor if actor is not None and actor.is_authenticated else None,
            verb=verb,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            reason=reason,
            details=details or {},
        )
