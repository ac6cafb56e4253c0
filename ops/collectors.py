"""What /metrics reads at scrape time from where it lives: robots by state and their heartbeat ages, the deployed
version and Celery queue depths. Process-side counters and histograms come from every process's files
(core.metrics); these are facts of the database and the broker, read once per scrape (a few cheap queries)."""
from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from fleet.models import Robot
from learner.models import PolicyVersion

log = logging.getLogger(__name__)

# The queues the Procfile's workers serve (sopweb/settings.py CELERY_TASK_ROUTES).
QUEUES = ("actors", "learner", "control", "default", "background")


def queue_depths() -> dict[str, int] | None:
    """Messages waiting in each Celery queue, from the broker (Redis or AMQP: kombu's passive declare), or None
    when the broker does not answer."""
    from celery import current_app as app

    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=settings.HEALTH_TIMEOUT_SECONDS)
            channel = connection.default_channel
            depths = {}
            for queue in QUEUES:
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # an AMQP queue nobody declared yet: nothing waits in it
                    depths[queue] = 0
                    channel = connection.channel()
            return depths
    except Exception as exc:
        log.warning("queue depths unavailable: %s", exc)
        return None


class FleetCollector:
    """A prometheus_client collector registered on /metrics's registry (ops.views)."""

    def collect(self):
        now = timezone.now()
        robots = list(Robot.objects.filter(retired=False).only(
            "name", "kind", "status", "enabled", "retired", "last_heartbeat"))
        by_state = GaugeMetricFamily("sopweb_robots", "Robots by state (as the fleet page shows them)",
                                     labels=["state"])
        counts = {state: 0 for state in Robot.State.values if state != Robot.State.REMOVED}
        for robot in robots:
            counts[str(robot.state)] = counts.get(str(robot.state), 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        age = GaugeMetricFamily("sopweb_robot_heartbeat_age_seconds", "Seconds since each robot last reported",
                                labels=["robot", "kind"])
        for robot in robots:
            if robot.last_heartbeat is not None:
                age.add_metric([robot.name, robot.kind], (now - robot.last_heartbeat).total_seconds())
        yield age
        deployed = PolicyVersion.objects.filter(state=PolicyVersion.State.DEPLOYED).order_by("-number").first()
        yield GaugeMetricFamily("sopweb_deployed_version", "The number of the version the fleet runs (0: none)",
                                value=deployed.number if deployed else 0)
        depths = queue_depths()
        if depths is not None:
            queue = GaugeMetricFamily("sopweb_celery_queue_depth", "Messages waiting in each Celery queue",
                                      labels=["queue"])
            for name, depth in depths.items():
                queue.add_metric([name], depth)
            yield queue
