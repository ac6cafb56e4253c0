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


@shared_task(name="tests.ingest_one")
def ingest_one(uuid: str, task: str, robot_id: int, version_id: int, success: bool) -> None:
    """Store one synthetic episode through the product's ingestion, in this worker process (its pid in `meta`)."""
    import os
    from datetime import datetime, timezone

    from fleet.ingest import ingest_episode
    from tests.factories import make_arrays

    now = datetime.now(timezone.utc)
    ingest_episode(uuid=uuid, task=task, seed=0, outcome="success" if success else "timeout",
                   arrays=make_arrays(steps=50, success_at=30 if success else None), started_at=now, finished_at=now,
                   robot_id=robot_id, policy_version_id=version_id, meta={"pid": os.getpid()})


@shared_task(name="tests.record")
def record(key: str, label: str) -> None:
    """Say this task ran (RPUSH `label` onto `key`), in the order the worker took them."""
    bus.client().rpush(key, label)
