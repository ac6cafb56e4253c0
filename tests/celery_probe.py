"""A task for tests only, which a worker imports when started with start_worker(include="tests.celery_probe"): it
holds its worker until the test releases it, so a test keeps a queue's worker busy without sleeping."""
from __future__ import annotations

from celery import shared_task

from core import bus


@shared_task(name="tests.hold", soft_time_limit=120, time_limit=150)
def hold(key: str) -> None:
    """Say it started (RPUSH `key`:started), then wait for the release token and pass it on to the next one."""
    client = bus.client()
    client.rpush(f"{key}:started", "1")
    if client.blpop([f"{key}:release"], timeout=110):
        client.rpush(f"{key}:release", "1")
