"""Commands to robots, as operators, rollouts, sweeps and actors give them.

Each command moves the robot's state through its model (a locked, audited transition that changes nothing when it
is refused) and then does what the move means outside the database, once the transaction commits: queue the
robot's next episode, tell its actor to abort or to hand control to the expert, nudge it to prefetch a version,
tell the dashboards. Views, management commands, governance and the actors call these, never the Redis keys or
the episode task directly.
"""
from __future__ import annotations

import json
import logging
import time

import django.dispatch
from celery import current_app
from django.conf import settings
from django.db import transaction

from core import bus
from core.events import broadcast_on_commit
from core.models import AuditEvent
from fleet.models import Robot

log = logging.getLogger(__name__)

# The actors' episode task (actors/tasks.py), queued by name: the fleet schedules episodes, the actor layer above
# it runs them. Routed to the `actors` queue (settings.CELERY_TASK_ROUTES).
RUN_EPISODE_TASK = "actors.run_episode"

# Sent inside the transaction that added a robot, so a receiver's writes commit with it or not at all.
# governance puts the new robot on the version the fleet runs (governance/apps.py).
robot_added = django.dispatch.Signal()  # kwargs: robot, actor


def _changed(robot: Robot, verb: str, tell_robot: bool = True) -> None:
    """Every open dashboard hears the robot's new state (its tile applies it as the POST's answer does), and a
    remote robot's socket hears that its commands may have changed."""
    broadcast_on_commit("robot.status", {**robot.live_state(), "verb": verb})
    if tell_robot:
        _nudge_remote(robot)


def _nudge_remote(robot: Robot) -> None:
    """A remote robot's socket hears at once that its assignment or the operators' commands changed (it reads
    them from the API; a robot without a socket reads them when it next polls)."""
    if not robot.in_process:
        _after_commit(bus.tell_robot, robot.pk, {"event": "assignment"})


def _after_commit(action, *args) -> None:
    """After commit, the move's effect outside the database. The move itself is the record: if Redis or the broker
    is away, the failure is logged and the request still succeeds (a robot that missed its nudge reads its state
    when it next polls; the sweep queues a started robot's lost episode)."""
    transaction.on_commit(lambda: action(*args), robust=True)


def schedule_episode(robot_id: int) -> bool:
    """Queue the robot's next episode unless one is already queued (at most one chain of episodes per robot).
    Only for robots whose episodes run in sopweb's actors; callers check `Robot.in_process`."""
    marker_ttl = int(settings.FLEET_LEASE_SECONDS * 2000)
    if not bus.degrade(bus.client().set, bus.scheduled_key(robot_id), "1", nx=True, px=marker_ttl, default=False):
        return False  # queued already, or Redis is away: the sweep queues it once Redis answers
    try:
        current_app.send_task(RUN_EPISODE_TASK, args=[robot_id])
    except Exception as exc:  # the broker is away (kombu's OperationalError, a Redis error): the sweep retries
        bus.degrade(bus.client().delete, bus.scheduled_key(robot_id))
        bus.redis_outage.failed(exc)
        return False
    return True


def _schedule(robot: Robot) -> None:
    """After commit, queue the next episode of a robot the actors run (a remote robot runs its own)."""
    if robot.in_process:
        _after_commit(schedule_episode, robot.pk)


def report_progress(progress: dict) -> None:
    """A running episode's step and who controls it, for the dashboards (they poll bus.PROGRESS_KEY). Written about
    once a second by the actor or by a remote robot's heartbeat; `progress["robot"]` is the robot's id."""
    bus.degrade(bus.client().hset, bus.PROGRESS_KEY, progress["robot"], json.dumps(dict(progress, at=time.time())))


def end_progress(robot_id: int) -> None:
    bus.degrade(bus.client().hdel, bus.PROGRESS_KEY, robot_id)


def _abort(robot_id: int) -> None:
    bus.client().set(bus.abort_key(robot_id), "1", px=600_000)


def _clear_abort(robot_id: int) -> None:
    bus.client().delete(bus.abort_key(robot_id))


def add(name: str, tasks, actor=None, kind: str = Robot.Kind.SIM, reason: str = "") -> Robot:
    """Add a robot to the fleet, stopped (`start` it to run episodes). Receivers of `robot_added` run in the same
    transaction: governance puts it on the version the fleet runs and in the fleet's rollout."""
    with transaction.atomic():
        robot = Robot.add(name, tasks, actor=actor, kind=kind, reason=reason)
        robot_added.send(sender=Robot, robot=robot, actor=actor)
    return robot


def remove(robot: Robot, actor, reason: str = "") -> None:
    """Out of the fleet (deleted, or retired once it has episodes); only a stopped robot, whose last episode is
    aborted if it still runs."""
    robot.remove(actor, reason=reason)
    _after_commit(_abort, robot.pk)
    _changed(robot, "robot.remove")


def start(robot: Robot, actor, reason: str = "") -> AuditEvent:
    """Run episodes back to back from now on (the first is queued after commit)."""
    event = robot.set_enabled(True, actor, reason)
    _changed(robot, event.verb)
    _schedule(robot)
    return event


def start_if_never_commanded(robot: Robot, reason: str) -> bool:
    """Start a robot that nobody has ever started or stopped: a demo's first start-up. A robot with a history keeps
    what it was last told, so a restart never starts a robot a person stopped. True if it was started."""
    told = AuditEvent.objects.filter(object_type=Robot._meta.label_lower, object_id=str(robot.pk),
                                     verb__in=["robot.start", "robot.stop"])
    if robot.enabled or robot.retired or told.exists():
        return False
    start(robot, None, reason=reason)
    return True


def stop(robot: Robot, actor, reason: str = "") -> AuditEvent:
    """Finish the running episode, then run no more."""
    event = robot.set_enabled(False, actor, reason)
    _changed(robot, event.verb)
    return event


def pause(robot: Robot, actor, reason: str = "") -> AuditEvent:
    """Abort the running episode within a few steps and run none until resumed."""
    event = robot.pause(actor, reason)
    _after_commit(_abort, robot.pk)
    _changed(robot, event.verb)
    return event


def resume(robot: Robot, actor, reason: str = "") -> AuditEvent:
    """Run again: starting until the robot next reports. The abort is lifted before the next episode is queued (in
    commit order), and an episode still aborting when this commits queues the next one itself (actors.runner)."""
    event = robot.resume(actor, reason)
    _after_commit(_clear_abort, robot.pk)
    _changed(robot, event.verb)
    _schedule(robot)
    return event


def take_over(robot: Robot, actor, reason: str = "") -> AuditEvent:
    """Put the expert in control of the running episode (or of the next, if none runs yet), for the rest of that
    episode. The robot is "operator in control" from this commit on; the robot reads the request from Redis."""
    with transaction.atomic():
        event = robot.take_over(actor, reason)
        _after_commit(bus.request_takeover, robot.pk, Robot.TAKEOVER_SECONDS)
    _changed(robot, event.verb)
    return event


def end_takeover(robot: Robot) -> None:
    """The episode a takeover reached has ended: the request is spent and the policy has the next episode."""
    bus.degrade(bus.client().delete, bus.takeover_key(robot.pk))
    if robot.end_takeover():
        _changed(robot, "robot.takeover_end")


def remote_episode_stored(robot: Robot) -> None:
    """A remote robot's episode was stored: a takeover that reached it is spent (end_takeover) and its tile shows
    the next episode's progress from the robot's next heartbeat. Every upload pays this, so it is one Redis round
    trip, and the robot's row is written only when a takeover was requested (its key was still there) or is shown
    (`robot.status` as read with this request's token): an upload without a takeover writes nothing here. A
    takeover committed after that read sets its key after its commit, so it is either deleted here (and ended
    here) or outlives this episode and takes over the next one, as the robot will hear."""
    def spend() -> list:
        with bus.client().pipeline(transaction=False) as pipe:
            return pipe.delete(bus.takeover_key(robot.pk)).hdel(bus.PROGRESS_KEY, robot.pk).execute()

    requested, _ = bus.degrade(spend, default=(1, 0))
    if (requested or robot.status == Robot.Status.OPERATOR) and robot.end_takeover():
        _changed(robot, "robot.takeover_end")


def mark_offline(robot: Robot, silent_since, reason: str = "heartbeat timeout") -> AuditEvent:
    event = robot.mark_offline(silent_since, reason)
    _changed(robot, event.verb)
    return event


def heartbeat(robot: Robot, status: str) -> bool:
    """A robot reports it is alive and what it does. False if the robot is paused (it must not run)."""
    alive, left = robot.heartbeat(status)
    if left is not None:
        # The robot itself reported: its heartbeat's answer carries its commands already.
        _changed(robot, "robot.online" if left == Robot.Status.OFFLINE else "robot.heartbeat", tell_robot=False)
    return alive


def assign_version(robot: Robot, version, actor=None, reason: str = "") -> AuditEvent:
    """The version the robot runs from its next episode on. Its actor prefetches the weights as soon as the nudge
    arrives (first in the round trip) and swaps at its next episode boundary; a started robot that idled for
    want of a version runs now."""
    event = robot.assign_version(version, actor, reason)
    nudge = None if version is None else (bus.VERSIONS_CHANNEL, {
        "robot": robot.pk, "version": version.pk, "path": version.checkpoint_path,
        "sha256": version.checkpoint_sha256})
    broadcast_on_commit("robot.version", {"robot": robot.pk, "version": version.pk if version else None},
                        nudge=nudge)
    if version is not None and robot.wants_episodes:
        _schedule(robot)
    _nudge_remote(robot)
    return event


# What an operator may tell one robot, by the name the web page and the CLI use: function(robot, actor, reason=...).
COMMANDS = {"start": start, "stop": stop, "pause": pause, "resume": resume, "takeover": take_over, "remove": remove}
