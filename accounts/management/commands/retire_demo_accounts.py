"""Leave demo mode: deactivate every demo account (audited; their sessions end). Nothing is deleted."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from accounts.models import DemoAccount
from accounts.services import deactivate


class Command(BaseCommand):
    help = "Deactivate every active demo account (made by seed_demo in demo mode), so the server starts without it."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="leaving demo mode", help="recorded in the audit log")

    def handle(self, *args, reason: str, **options):
        retired = []
        for demo in DemoAccount.objects.filter(user__is_active=True).select_related("user"):
            deactivate(demo.user, None, reason=reason)
            retired.append(demo.user.get_username())
        if retired:
            self.stdout.write(f"deactivated {len(retired)} demo account(s): {', '.join(sorted(retired))}")
        else:
            self.stdout.write("no active demo accounts")
