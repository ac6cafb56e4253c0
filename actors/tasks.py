"""The actors' Celery task, routed to the `actors` queue (settings.CELERY_TASK_ROUTES) and queued by name by
fleet.control.schedule_episode."""
from __future__ import annotations

from celery import shared_task

from fleet.control import RUN_EPISODE_TASK


# Not acks_late: a message redelivered an hour after its worker died would start a second chain of episodes.
# Recovery is the sweep's job instead: once the dead episode's lease expires, it schedules the robot again.
@shared_task(name=RUN_EPISODE_TASK, soft_time_limit=120, time_limit=150)
def run_episode(robot_id: int) -> str:
    """Run one episode of one robot, then schedule its next while it is started.

    The episode is ingested in one transaction, so a worker killed mid-episode leaves nothing half-written.
    """
    from actors.runner import run_robot_episode

    return run_robot_episode(robot_id)


@shared_task(name="actors.drain_outbox", soft_time_limit=120, time_limit=150)
def drain_outbox() -> int:
    """Beat's pass over episodes kept on disk while the database was away (each episode run drains them too, but
    a fleet whose robots are all stopped runs none)."""
    from actors import outbox

    return outbox.drain()
