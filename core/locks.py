"""PostgreSQL advisory locks that several apps take to serialise one kind of decision. Each is held until the
current transaction ends and is re-entrant within it."""
from __future__ import annotations

from django.db import connection

ROLLOUTS = "sopweb.rollout"  # which version robots run: deploy, canary, promote, roll back, retention's deletions
PUBLISH = "sopweb.publish_version"  # the next version number


def hold(name: str) -> None:
    """Take the named transaction-level advisory lock (waits for whoever holds it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def rollout_lock() -> None:
    """Serialise fleet-wide rollout decisions until the current transaction ends: each reads and changes several
    versions and robots, which no single row lock covers."""
    hold(ROLLOUTS)
