"""Robot credentials: bearer tokens, each scoped to one robot, stored as a hash."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class RobotToken(models.Model):
    """One credential of one robot. The token itself (`sopr_<key>_<secret>`) is shown once, when it is issued; only
    its public key and the secret's SHA-256 are stored. Revoked and expired tokens stay, for the audit trail and the
    robot page's history."""

    robot = models.ForeignKey("fleet.Robot", on_delete=models.CASCADE, related_name="tokens")
    key = models.CharField(max_length=16, unique=True, help_text="The token's public part, to find the row.")
    secret_sha256 = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="None: valid until revoked.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["-created_at"]
        permissions = [("enrol_robot", "Can enrol remote robots and issue, rotate and revoke their tokens")]

    def __str__(self) -> str:
        return f"token {self.key} of robot {self.robot_id}"

    def state(self, now=None) -> str:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"
