"""Celery tasks of the learner. `learner.train` runs on the `learner` queue (one worker, concurrency 1)."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(name="learner.train", soft_time_limit=settings.LEARNER_SLICE_SECONDS + 120,
             time_limit=settings.LEARNER_SLICE_SECONDS + 180)
def train(token: str | None = None) -> str:
    """One slice of the continuous learner loop; it re-queues itself while the run is active (`token`: see
    learner.loop)."""
    from learner.loop import run_slice

    return run_slice(token=token)


@shared_task(name="learner.ensure_running", soft_time_limit=20, time_limit=30)
def ensure_running() -> bool:
    """Beat's watchdog (every LEARNER_WATCHDOG_SECONDS): an active run with neither a slice training (its lease
    expired: the learner died) nor a slice queued gets a new slice, which resumes from the saved state."""
    from core import bus
    from learner.loop import LEASE_KEY, _enqueue
    from learner.models import TrainingRun

    if settings.LEARNER_WORLD_SIZE > 1:  # the learner service loops by itself (learner.distributed)
        return False
    if not TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).exists():
        return False
    if bus.client().exists(LEASE_KEY, bus.LEARNER_QUEUED_KEY):
        return False
    _enqueue()
    return True


@shared_task(name="learner.prune_checkpoints", soft_time_limit=120, time_limit=180)
def prune_checkpoints() -> int:
    """Beat's housekeeping: delete the checkpoints retention no longer protects (learner.retention)."""
    from learner.retention import prune_checkpoints as prune

    return len(prune())
