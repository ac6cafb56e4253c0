"""/healthz and /readyz: is this process up, and can it do its work now.

/readyz asks each dependency once, with HEALTH_TIMEOUT_SECONDS each: PostgreSQL (SELECT 1), the migrations (every
migration on disk applied), Redis (PING) and the Celery broker (a connection; the same Redis unless the broker is
RabbitMQ). A load balancer or Kubernetes takes the process out of rotation while it answers 503, and back when it
answers 200: nothing is cached across requests but the list of migrations on disk, so recovery needs no restart.
"""
from __future__ import annotations

import functools
import logging
import time

from django.conf import settings
from django.db import connection

from core.outages import Outage

log = logging.getLogger(__name__)


_outages: dict[str, Outage] = {}


def _timed(name: str, check) -> dict:
    """Run one check: its time, and the failure in words. A failure is logged once per outage (core.outages)."""
    outage = _outages.setdefault(name, Outage(f"/readyz: {name}"))
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # the answer is the failure, in words
        outage.failed(exc, log)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300],
                "ms": round((time.perf_counter() - start) * 1000, 1)}
    outage.ok(log)
    return {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1), **(detail or {})}


@functools.cache
def _migrations_on_disk() -> frozenset[tuple[str, str]]:
    """The leaf migration of every app (read from disk once per process: code does not change while it runs)."""
    from django.db.migrations.loader import MigrationLoader

    return frozenset(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes())


def database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def migrations() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT app, name FROM django_migrations")
        applied = set(cursor.fetchall())
    missing = sorted(f"{app}.{name}" for app, name in _migrations_on_disk() - applied)
    if missing:
        raise RuntimeError(f"unapplied migrations: {', '.join(missing[:5])}")
    return None


def redis_ping() -> None:
    import redis

    from core import bus

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.HEALTH_TIMEOUT_SECONDS,
                                  socket_connect_timeout=settings.HEALTH_TIMEOUT_SECONDS,
                                  **{k: v for k, v in bus.CLIENT_OPTIONS.items()
                                     if k not in ("socket_timeout", "socket_connect_timeout")})
    try:
        client.ping()
    finally:
        client.close()


def broker() -> None:
    from celery import current_app as app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.HEALTH_TIMEOUT_SECONDS)
        if conn.transport.driver_type == "redis":
            conn.default_channel.client.ping()  # kombu's Redis transport connects lazily: ask it something


def readiness() -> tuple[bool, dict]:
    checks = {"database": _timed("database", database)}
    checks["migrations"] = _timed("migrations", migrations) if checks["database"]["ok"] else \
        {"ok": False, "error": "the database does not answer"}
    checks["redis"] = _timed("redis", redis_ping)
    checks["broker"] = _timed("broker", broker)
    return all(check["ok"] for check in checks.values()), checks
