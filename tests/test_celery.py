"""Celery: JSON only, tasks routed to their queues, a real worker process writing to PostgreSQL, and governance
checks that bulk work cannot delay."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core import bus
from core.models import AuditEvent
from fleet.models import Robot
from fleet.tasks import sweep_robots
from governance.decisions import deploy_to_fleet
from governance.tasks import check
from learner.models import PolicyVersion
from sopweb.celery import app
from tests.conftest import wait_for


def test_tasks_are_routed_by_name():
    router = app.amqp.router
    assert router.route({}, "actors.run_episode")["queue"].name == "actors"
    assert router.route({}, "learner.train")["queue"].name == "learner"
    assert router.route({}, "review.render_replay")["queue"].name == "background"
    assert router.route({}, "review.export_dataset")["queue"].name == "background"
    assert router.route({}, "review.render_ahead")["queue"].name == "default"
    assert router.route({}, "learner.prune_checkpoints")["queue"].name == "default"


@pytest.mark.parametrize("name", ["governance.check", "governance.finish_evaluations", "fleet.sweep_robots",
                                  "learner.ensure_running"])
def test_what_keeps_the_fleet_safe_runs_on_the_control_queue(name):
    app.loader.import_default_modules()  # what a worker imports at start: every app's tasks
    assert name in app.tasks  # a renamed task would silently fall back to `default`
    assert app.amqp.router.route({}, name)["queue"].name == "control"
    # Beat's periodic control work is on the list too.
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"governance.check", "fleet.sweep_robots", "learner.ensure_running"} <= scheduled


def test_the_procfile_runs_one_control_worker():
    from tests.conftest import ROOT

    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    assert "-Q control " in lines["control"] and "--concurrency 1 " in lines["control"]
    assert not any("control" in command for name, command in lines.items() if name != "control")


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


def test_a_governance_check_runs_at_once_while_bulk_work_floods_default_and_background(start_worker, tasks):
    """The default and background workers are each held by a long job with a flood queued behind it; the control
    worker still rolls a worse canary back at once."""
    from governance import decisions
    from tests.test_governance import make_episode, make_version

    robots = []
    for name in ("sim-1", "sim-2"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set(tasks)
        robots.append(robot)
    deployed = make_version(1)
    deploy_to_fleet(deployed, reason="base policy")
    canary = make_version(2)
    for verb in ("nominate", "start_evaluation", "finish_evaluation"):
        canary.advance(verb)
    decisions.approve_canary(canary, None, reason="setup", robots=[robots[0]])
    for _ in range(3):
        make_episode(robots[0], canary, tasks[0], success=False)
        make_episode(robots[1], deployed, tasks[0])

    key, flood = f"sopweb:test:hold:{uuid.uuid4().hex}", 20
    redis = bus.client()
    start_worker("default", queues="default", include="tests.celery_probe")
    start_worker("background", queues="background", include="tests.celery_probe")
    for queue in ("default", "background"):
        for _ in range(flood):
            app.send_task("tests.hold", args=[key], queue=queue)
    wait_for(lambda: redis.llen(f"{key}:started") == 2, 60, "both bulk workers to be busy")
    start_worker("control", queues="control", GOVERNANCE_CANARY_MIN_EPISODES=3, GOVERNANCE_CANARY_MARGIN=0.3)
    try:
        check.delay()
        wait_for(lambda: PolicyVersion.objects.get(pk=canary.pk).state == PolicyVersion.State.ROLLED_BACK, 30,
                 "the control worker's governance check to roll the canary back")
        assert redis.llen(f"{key}:started") == 2  # the bulk workers never got past their first job meanwhile
        assert AuditEvent.objects.get(verb="version.roll_back").actor is None
    finally:
        redis.rpush(f"{key}:release", "1")
        wait_for(lambda: redis.llen(f"{key}:started") == 2 * flood, 60, "the flood to drain")
