"""Celery tasks of the fleet. Actor tasks (fleet.run_*) are routed to the `actors` queue."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from fleet.models import IllegalTransition, Robot

log = logging.getLogger(__name__)


@shared_task(name="fleet.sweep_robots", soft_time_limit=30, time_limit=60)
def sweep_robots() -> int:
    """Mark robots whose actor has gone silent as offline (periodic, from beat). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.FLEET_HEARTBEAT_TIMEOUT)
    silent = Robot.objects.filter(status__in=Robot.REPORTABLE, last_heartbeat__lt=cutoff)
    marked = 0
    for robot in silent:
        try:
            robot.mark_offline(cutoff, reason=f"no heartbeat for {settings.FLEET_HEARTBEAT_TIMEOUT:g} s")
        except IllegalTransition:
            continue  # it heartbeat, was paused or went offline meanwhile
        marked += 1
    if marked:
        log.info("marked %d silent robot(s) offline", marked)
    return marked
