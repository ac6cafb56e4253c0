"""The audit trail every app writes: who did what to which object, when, why, and the figures they saw.

It is append-only in the database: a trigger refuses UPDATE and DELETE on its table (core/migrations/0002), so
no code path, admin page or stray query can rewrite history; users who acted cannot be deleted (PROTECT)."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """Who did what to which object, when, why, and the figures they saw. Also the outbox for live events."""

    # Users are deactivated, never deleted (PROTECT); the name is kept on the row as it was when they acted.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    actor_name = models.CharField(max_length=150, blank=True, help_text="The actor's username when they acted; "
                                                                          "empty for the system.")
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
        return f"{self.who} {self.verb} {self.object_repr}"

    @property
    def who(self) -> str:
        return self.actor_name or "system"

    @classmethod
    def record(cls, actor, verb: str, obj: models.Model, *, reason: str = "", details: dict | None = None):
        person = actor if actor is not None and actor.is_authenticated else None
        return cls.objects.create(
            actor=person,
            actor_name=person.get_username() if person is not None else "",
            verb=verb,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            reason=reason,
            details=details or {},
        )
