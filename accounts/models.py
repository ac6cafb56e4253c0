"""People's accounts: who may manage them, and which ones are demo accounts with known passwords."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.utils import timezone


class Account(User):
    """Django's user, as the object of account management. It holds the `accounts.manage_users` permission (granted
    to supervisors in fleet/roles.py); it has no table of its own."""

    class Meta:
        proxy = True
        default_permissions = ()
        permissions = [("manage_users", "Can deactivate and reactivate users")]


class DemoAccount(models.Model):
    """A user that seed_demo made (or found under a demo username) in demo mode: its password is known and printed.
    While one is active, the web command refuses to start outside demo mode (accounts.demo)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="demo_account")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"demo account {self.user}"
