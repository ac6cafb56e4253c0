"""Celery tasks of the learner. `learner.train` runs on the `learner` queue (one worker, concurrency 1)."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(name="learner.train", soft_time_limit=settings.LEARNER_SLICE_SECONDS + 120,
             time_limit=settings.LEARNER_SLICE_SECONDS + 180)
def train() -> str:
    """One slice of the continuous learner loop; it re-queues itself while the run is active."""
    from learner.loop import run_slice

    return run_slice()


@shared_task(name="learner.ensure_running", soft_time_limit=20, time_limit=30)
def ensure_running() -> bool:
    """Beat's watchdog: an active run whose learner died (its lease expired) gets a new slice."""
    from core import bus
    from learner.loop import LEASE_KEY, _enqueue
    from learner.models import TrainingRun

    if TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).exists() and not bus.client().exists(LEASE_KEY):
        _enqueue()
        return True
    return False


@shared_task(name="learner.prune_checkpoints", soft_time_limit=120, time_limit=180)
def prune_checkpoints() -> int:
    """Beat's housekeeping: delete the checkpoints retention no longer protects (learner.retention)."""
    from learner.retention import prune_checkpoints as prune

    return len(prune())
