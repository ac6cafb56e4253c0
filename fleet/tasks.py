"""Celery tasks of the fleet: the sweep that notices silent robots (the episode task is in actors/tasks.py)."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import models
from django.utils import timezone

from core import bus
from core.audit import IllegalTransition
from fleet import control
from fleet.models import Robot

log = logging.getLogger(__name__)


@shared_task(name="fleet.sweep_robots", soft_time_limit=30, time_limit=60)
def sweep_robots() -> int:
    """Mark robots whose actor has gone silent as offline (periodic, from beat). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.FLEET_HEARTBEAT_TIMEOUT)
    # Robots that went silent, and robots started or resumed that never answered.
    quiet = models.Q(last_heartbeat__lt=cutoff) | models.Q(last_heartbeat=None)
    unanswered = models.Q(status_changed_at__lt=cutoff) | models.Q(status_changed_at=None)
    silent = Robot.objects.filter(quiet & unanswered, status__in=[*Robot.REPORTABLE, Robot.Status.STARTING])
    marked = 0
    for robot in silent:
        try:
            control.mark_offline(robot, cutoff, reason=f"no heartbeat for {settings.FLEET_HEARTBEAT_TIMEOUT:g} s")
        except IllegalTransition:
            continue  # it reported, was paused or went offline meanwhile
        marked += 1
    if marked:
        log.info("marked %d silent robot(s) offline", marked)
    return marked + _restart_orphaned_robots()


@shared_task(name="fleet.archive_payloads", soft_time_limit=1800, time_limit=1900)
def archive_payloads() -> dict:
    """Beat, hourly: move old episode payloads from PostgreSQL to storage (fleet.archive), a batch at a time."""
    if settings.PAYLOAD_ARCHIVE_AFTER_DAYS <= 0:
        return {"archived": 0, "bytes": 0, "failed": 0}
    from fleet.archive import archive_payloads as archive

    return archive()


def _restart_orphaned_robots() -> int:
    """Started robots whose actor died mid-episode: once the lease expired and nobody heartbeats, run again."""
    quiet_since = timezone.now() - timedelta(seconds=settings.FLEET_LEASE_SECONDS)
    restarted = 0
    candidates = Robot.objects.filter(enabled=True, kind=Robot.Kind.SIM).exclude(status=Robot.Status.PAUSED)
    for robot in candidates.filter(models.Q(last_heartbeat__lt=quiet_since) | models.Q(last_heartbeat=None)):
        if not bus.client().exists(bus.lease_key(robot.pk)) and control.schedule_episode(robot.pk):
            log.info("restarting robot %s: its last episode's lease expired", robot.name)
            restarted += 1
    return restarted
