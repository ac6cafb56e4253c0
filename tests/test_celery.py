"""Celery: JSON only, tasks routed to their queues, and a real worker process writing to PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from core.models import AuditEvent
from fleet.models import Robot
from fleet.tasks import sweep_robots
from sopweb.celery import app
from tests.conftest import wait_for


def test_tasks_are_routed_by_name():
    router = app.amqp.router
    assert router.route({}, "actors.run_episode")["queue"].name == "actors"
    assert router.route({}, "learner.train")["queue"].name == "learner"
    assert router.route({}, "learner.ensure_running")["queue"].name == "default"
    assert router.route({}, "fleet.sweep_robots")["queue"].name == "default"


def test_only_json_is_accepted():
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit


def test_a_real_worker_runs_a_sent_task_that_writes_to_postgres(celery_worker_process):
    stale = timezone.now() - timedelta(minutes=10)
    silent = Robot.objects.create(name="sim-silent", status=Robot.Status.RUNNING, last_heartbeat=stale)
    alive = Robot.objects.create(name="sim-alive", status=Robot.Status.RUNNING, last_heartbeat=timezone.now())

    sweep_robots.delay()

    wait_for(lambda: Robot.objects.get(pk=silent.pk).status == Robot.Status.OFFLINE, 30,
             "the worker to mark the silent robot offline")
    event = AuditEvent.objects.get(verb="robot.offline")
    assert event.object_id == str(silent.pk) and event.actor is None
    assert Robot.objects.get(pk=alive.pk).status == Robot.Status.RUNNING
