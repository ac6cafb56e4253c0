"""manage.py archive_payloads: move old episode payloads from PostgreSQL to storage now (beat does it hourly)."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core import storage


class Command(BaseCommand):
    help = ("Move the payloads of episodes finished more than --older-than-days ago (default "
            "PAYLOAD_ARCHIVE_AFTER_DAYS) from PostgreSQL to storage: copied, verified, then cleared.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=float, default=None)
        parser.add_argument("--limit", type=int, default=None, help="at most this many (default "
                                                                    "PAYLOAD_ARCHIVE_BATCH)")

    def handle(self, *args, older_than_days=None, limit=None, **options):
        from fleet.archive import archive_payloads

        days = settings.PAYLOAD_ARCHIVE_AFTER_DAYS if older_than_days is None else older_than_days
        if days < 0:
            raise CommandError(f"--older-than-days must be 0 or more, not {days:g}")
        if limit is not None and limit < 1:
            raise CommandError(f"--limit must be at least 1, not {limit}")
        result = archive_payloads(timedelta(days=days), limit)
        self.stdout.write(f"archived {result['archived']} payloads ({result['bytes']} bytes) to "
                          f"{storage.describe()}; {result['failed']} failed")
        if result["failed"]:
            raise CommandError(f"{result['failed']} payloads could not be archived (see the log); they stay in "
                               "PostgreSQL and are tried again")
