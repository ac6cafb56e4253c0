"""PostgreSQL advisory locks that serialise one kind of decision (every name is here). Each is held until the
current transaction ends and is re-entrant within it; taken outside a transaction it is released at once."""
from __future__ import annotations

from django.db import connection

ROLLOUTS = "sopweb.rollout"  # which version robots run: deploy, canary, promote, roll back, retention's deletions
PUBLISH = "sopweb.publish_version"  # the next version number
RENDERS = "sopweb.review.renders"  # admitting a replay render under the system-wide cap (review.ReplayVideo)


def exports_of(user_id: int) -> str:
    """Admitting one person's dataset export under their limit of running exports (review.DatasetExport)."""
    return f"sopweb.review.exports:{user_id}"


def hold(name: str) -> None:
    """Take the named transaction-level advisory lock (waits for whoever holds it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def rollout_lock() -> None:
    """Serialise fleet-wide rollout decisions until the current transaction ends: each reads and changes several
    versions and robots, which no single row lock covers."""
    hold(ROLLOUTS)
