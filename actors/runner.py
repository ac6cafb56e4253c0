"""One episode of one robot, from the actor worker's side: lease, plan, simulation, ingestion, next episode.

The simulation itself is Django-free (fleet/sim/); this module binds it to the database and Redis.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from core import bus
from fleet import control
from fleet.ingest import ingest_episode
from fleet.models import Episode, Robot
from governance import evaluation as governance_evaluation

log = logging.getLogger(__name__)
_sim_tasks: dict = {}  # env name -> SimTask: building a MuJoCo scene costs ~0.1 s, so each process keeps its own
_torch_ready = False


def sim_task(env_name: str):
    from fleet.sim.envs import make_task

    if env_name not in _sim_tasks:
        _sim_tasks[env_name] = make_task(env_name)
    return _sim_tasks[env_name]


def _prepare_process() -> None:
    """Once per worker process: one torch thread per actor, and the prefetch listener."""
    global _torch_ready
    if not _torch_ready:
        import torch

        torch.set_num_threads(1)
        from actors.policy_cache import cache

        cache.start_prefetching()
        _torch_ready = True


def _ingest_with_retry(attempts: int = 4, **episode) -> Episode:
    """Ingestion is idempotent by UUID, so a transient database error (a failover, a deadlock victim) is retried
    rather than losing the episode the robot just spent seconds on."""
    from django.db import OperationalError, connection

    for attempt in range(attempts):
        try:
            return ingest_episode(**episode)[0]
        except OperationalError:
            if attempt == attempts - 1:
                raise
            log.warning("ingesting episode %s failed (attempt %d); retrying", episode["uuid"], attempt + 1)
            connection.close()  # a broken connection must not be reused
            time.sleep(0.2 * 2 ** attempt)


def run_robot_episode(robot_id: int) -> str:
    """Run the robot's next episode if it should run one. Returns what happened, for logs and tests."""
    bus.client().delete(bus.scheduled_key(robot_id))
    robot = Robot.objects.filter(pk=robot_id).first()
    if robot is None:
        return "gone"
    if not robot.enabled or robot.status == Robot.Status.PAUSED:
        return "not running"
    if not robot.in_process:
        return "remote"  # it runs its own episodes and reports them over the API
    lease = bus.Lease(bus.lease_key(robot_id), uuid.uuid4().hex, settings.FLEET_LEASE_SECONDS)
    if not lease.acquire():
        return "busy"  # another episode of this robot is in flight
    try:
        outcome = _run_leased(robot, lease)
    finally:
        lease.release()
    robot.refresh_from_db(fields=["enabled", "status"])
    if robot.enabled and robot.status != Robot.Status.PAUSED and outcome not in ("idle", "aborted"):
        control.schedule_episode(robot_id)
    return outcome


POLL_EVERY = 8  # steps between two looks at Redis (takeover, abort) and, once a second, heartbeat and progress


@dataclass
class _Plan:
    """What the next episode runs: the version (the robot's own, or the one an evaluation item asks for), its loaded
    policy, the task, the seed, the source and the gate."""

    version: object
    policy: object
    evaluation: object | None
    task: object
    seed: int
    source: str
    gate_config: object


def _plan(robot: Robot) -> _Plan | str:
    """The next episode's plan, or why there is none ("idle", "candidate unloadable")."""
    from actors.policy_cache import cache, mark_ready
    from fleet.sim.envs import online_seed
    from fleet.sim.gate import GateConfig
    from learner.models import PolicyVersion
    from learner.policy import CheckpointError

    tasks = list(robot.tasks.filter(enabled=True).order_by("env_name"))
    # The swap point: the assigned version is read once, right at the episode's start, and used throughout.
    version = PolicyVersion.objects.filter(robots=robot).first()
    if not tasks or version is None:
        control.heartbeat(robot, Robot.Status.IDLE)
        log.info("robot %s has %s", robot.name, "no tasks" if not tasks else "no policy version assigned")
        return "idle"
    # Evaluation work first: a candidate waits for it. The evaluated version runs alone on a held-out seed.
    evaluation = governance_evaluation.claim(robot, tasks)
    if evaluation is not None:
        version = evaluation.version
    try:
        policy = cache.get(version.pk, version.checkpoint_path, version.checkpoint_sha256)
    except CheckpointError as exc:
        log.exception("robot %s cannot load policy %s", robot.name, version)
        if evaluation is not None and governance_evaluation.unloadable(evaluation, exc):
            return "candidate unloadable"  # it is rejected; the robot's next episode runs its own version
        control.heartbeat(robot, Robot.Status.IDLE)
        return "idle"
    if evaluation is not None:
        return _Plan(version, policy, evaluation, evaluation.task, evaluation.seed, Episode.Source.EVALUATION,
                     GateConfig.from_dict({**settings.FLEET_GATE, "enabled": False}))
    mark_ready(robot.pk, version.pk)
    task_row = tasks[bus.client().incr(bus.episode_counter_key(robot.pk)) % len(tasks)]
    return _Plan(version, policy, None, task_row, online_seed(), Episode.Source.ONLINE,
                 GateConfig.from_dict(settings.FLEET_GATE))


class _Monitor:
    """The episode's `poll`: every POLL_EVERY steps it reads the operator's commands (abort, takeover) and, about
    once a second of wall time, renews the lease, heartbeats and reports progress for the dashboards."""

    def __init__(self, robot: Robot, lease: bus.Lease, gate, progress: dict):
        self.robot, self.lease, self.gate, self.progress = robot, lease, gate, progress
        self.last_beat, self.polls = time.monotonic(), 0

    def __call__(self) -> str | None:
        self.polls += 1
        takeover, abort = bus.client().mget(bus.takeover_key(self.robot.pk), bus.abort_key(self.robot.pk))
        now = time.monotonic()
        if now - self.last_beat > 1.0:
            self.last_beat = now
            if not self.lease.renew():
                return "abort"  # our claim expired (e.g. the worker stalled): another actor may own the robot
            gate = self.gate
            control.heartbeat(self.robot, Robot.Status.EXPERT if gate.in_control or gate.operator
                              else Robot.Status.RUNNING)
            self.progress.update(step=(self.polls - 1) * POLL_EVERY,
                                 control="operator" if gate.operator else "expert" if gate.in_control else "policy")
            control.report_progress(self.progress)
        if abort:
            return "abort"
        if takeover:
            return "takeover"
        return None


def _run_leased(robot: Robot, lease: bus.Lease) -> str:
    from fleet.sim.actor import run_episode
    from fleet.sim.gate import Gate

    _prepare_process()
    started_at = timezone.now()
    plan = _plan(robot)
    if isinstance(plan, str):
        return plan
    task_name = plan.task.env_name
    sim, gate = sim_task(task_name), Gate(plan.gate_config)
    control.heartbeat(robot, Robot.Status.RUNNING)
    progress = {"robot": robot.pk, "task": task_name, "version": plan.version.number, "source": plan.source,
                "started_at": started_at.isoformat(), "step": 0, "control": "policy"}
    control.report_progress(progress)
    policy = plan.policy
    act = lambda obs: policy.select_action(obs, task_name)  # noqa: E731
    doubt = (lambda obs: policy.doubt(obs, task_name)) if policy.config.ensemble > 1 else None  # noqa: E731
    try:
        result = run_episode(sim, act, plan.seed, gate, max_steps=plan.task.max_steps,
                             poll_every=POLL_EVERY, realtime_factor=settings.FLEET_REALTIME_FACTOR,
                             poll=_Monitor(robot, lease, gate, progress), doubt=doubt)
    finally:
        control.end_progress(robot.pk)
    if result.steps == 0:
        if plan.evaluation is not None:
            governance_evaluation.release(plan.evaluation)
        return "aborted"
    return _store(robot, plan, result, started_at)


def _store(robot: Robot, plan: _Plan, result, started_at) -> str:
    """Ingest the finished episode (an evaluation's is recorded against its item) and end a takeover."""
    outcome = {"success": Episode.Outcome.SUCCESS, "timeout": Episode.Outcome.TIMEOUT,
               "aborted": Episode.Outcome.ABORTED}[result.outcome]
    episode = _ingest_with_retry(
        uuid=uuid.uuid4(), task=plan.task.env_name, seed=plan.seed, outcome=outcome, arrays=result.arrays,
        started_at=started_at, finished_at=timezone.now(), robot_id=robot.pk, policy_version_id=plan.version.pk,
        source=plan.source,
        meta={"gate": plan.gate_config.as_dict(), "takeovers": result.takeovers,
              "takeover_doubts": result.takeover_doubts,
              "realtime_factor": settings.FLEET_REALTIME_FACTOR, "wall_seconds": round(result.wall_seconds, 3)},
    )
    if plan.evaluation is not None:  # a worker that dies before this leaves the item to be claimed again later
        governance_evaluation.record(plan.evaluation, episode)
    # A takeover lasts for the episode it reached (or, asked while the robot was between episodes, the next one).
    bus.client().delete(bus.takeover_key(robot.pk))
    return outcome
