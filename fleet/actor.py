"""One episode of one robot, from the actor worker's side: lease, policy, simulation, ingestion, next episode.

The simulation itself is Django-free (fleet/sim/); this module binds it to the database and Redis.
"""
from __future__ import annotations

import json
import logging
import time
import uuid

from django.conf import settings
from django.utils import timezone

from fleet import bus
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
        from fleet.policy_cache import cache

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


def schedule_episode(robot_id: int) -> bool:
    """Queue the robot's next episode unless one is already queued (at most one chain of episodes per robot)."""
    from fleet.tasks import run_episode

    marker_ttl = int(settings.FLEET_LEASE_SECONDS * 2000)
    if bus.client().set(bus.scheduled_key(robot_id), "1", nx=True, px=marker_ttl):
        run_episode.delay(robot_id)
        return True
    return False


def run_robot_episode(robot_id: int) -> str:
    """Run the robot's next episode if it should run one. Returns what happened, for logs and tests."""
    bus.client().delete(bus.scheduled_key(robot_id))
    robot = Robot.objects.filter(pk=robot_id).first()
    if robot is None:
        return "gone"
    if not robot.enabled or robot.status == Robot.Status.PAUSED:
        return "not running"
    lease = bus.Lease(bus.lease_key(robot_id), uuid.uuid4().hex, settings.FLEET_LEASE_SECONDS)
    if not lease.acquire():
        return "busy"  # another episode of this robot is in flight
    try:
        outcome = _run_leased(robot, lease)
    finally:
        lease.release()
    robot.refresh_from_db(fields=["enabled", "status"])
    if robot.enabled and robot.status != Robot.Status.PAUSED and outcome not in ("idle", "aborted"):
        schedule_episode(robot_id)
    return outcome


POLL_EVERY = 8  # steps between two looks at Redis (takeover, abort) and, once a second, heartbeat and progress


def report_progress(progress: dict) -> None:
    """The running episode's step and who controls it, for dashboards (they poll bus.PROGRESS_KEY)."""
    bus.client().hset(bus.PROGRESS_KEY, progress["robot"], json.dumps(dict(progress, at=time.time())))


def _run_leased(robot: Robot, lease: bus.Lease) -> str:
    from fleet.policy_cache import cache, mark_ready
    from fleet.sim.actor import run_episode
    from fleet.sim.envs import online_seed
    from fleet.sim.gate import Gate, GateConfig
    from learner.models import PolicyVersion
    from learner.policy import CheckpointError

    _prepare_process()
    tasks = list(robot.tasks.filter(enabled=True).order_by("env_name"))
    # The swap point: the assigned version is read once, right at the episode's start, and used throughout.
    started_at = timezone.now()
    version = PolicyVersion.objects.filter(robots=robot).first()
    if not tasks or version is None:
        robot.heartbeat(Robot.Status.IDLE)
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
        robot.heartbeat(Robot.Status.IDLE)
        return "idle"

    r = bus.client()
    if evaluation is None:
        mark_ready(robot.pk, version.pk)
        task_row = tasks[r.incr(bus.episode_counter_key(robot.pk)) % len(tasks)]
        gate_config, seed, source = GateConfig.from_dict(settings.FLEET_GATE), online_seed(), Episode.Source.ONLINE
    else:
        task_row, seed, source = evaluation.task, evaluation.seed, Episode.Source.EVALUATION
        gate_config = GateConfig.from_dict({**settings.FLEET_GATE, "enabled": False})
    sim = sim_task(task_row.env_name)
    gate = Gate(gate_config)
    episode_uuid = uuid.uuid4()
    robot.heartbeat(Robot.Status.RUNNING)
    last_beat = time.monotonic()
    polls = 0
    progress = {"robot": robot.pk, "task": task_row.env_name, "version": version.number, "source": source,
                "started_at": started_at.isoformat(), "step": 0, "control": "policy"}
    report_progress(progress)

    def poll() -> str | None:
        nonlocal last_beat, polls
        polls += 1
        takeover, abort = r.mget(bus.takeover_key(robot.pk), bus.abort_key(robot.pk))
        now = time.monotonic()
        if now - last_beat > 1.0:  # heartbeat and lease renewal about once a second of wall time
            last_beat = now
            if not lease.renew():
                return "abort"  # our claim expired (e.g. the worker stalled): another actor may own the robot
            robot.heartbeat(Robot.Status.EXPERT if gate.in_control or gate.operator else Robot.Status.RUNNING)
            progress.update(step=(polls - 1) * POLL_EVERY,
                            control="operator" if gate.operator else "expert" if gate.in_control else "policy")
            report_progress(progress)
        if abort:
            return "abort"
        if takeover:
            return "takeover"
        return None

    task_name = task_row.env_name
    act = lambda obs: policy.select_action(obs, task_name)  # noqa: E731
    doubt = (lambda obs: policy.doubt(obs, task_name)) if policy.config.ensemble > 1 else None  # noqa: E731
    try:
        result = run_episode(sim, act, seed, gate, max_steps=task_row.max_steps, poll_every=POLL_EVERY,
                             realtime_factor=settings.FLEET_REALTIME_FACTOR, poll=poll, doubt=doubt)
    finally:
        r.hdel(bus.PROGRESS_KEY, robot.pk)
    if result.steps == 0:
        if evaluation is not None:
            governance_evaluation.release(evaluation)
        return "aborted"
    outcome = {"success": Episode.Outcome.SUCCESS, "timeout": Episode.Outcome.TIMEOUT,
               "aborted": Episode.Outcome.ABORTED}[result.outcome]
    episode = _ingest_with_retry(
        uuid=episode_uuid, task=task_name, seed=seed, outcome=outcome, arrays=result.arrays,
        started_at=started_at, finished_at=timezone.now(), robot_id=robot.pk, policy_version_id=version.pk,
        source=source,
        meta={"gate": gate_config.as_dict(), "takeovers": result.takeovers,
              "takeover_doubts": result.takeover_doubts,
              "realtime_factor": settings.FLEET_REALTIME_FACTOR, "wall_seconds": round(result.wall_seconds, 3)},
    )
    if evaluation is not None:  # a worker that dies before this leaves the item to be claimed again after a while
        governance_evaluation.record(evaluation, episode)
    # A takeover lasts for the episode it reached (or, asked while the robot was between episodes, the next one).
    r.delete(bus.takeover_key(robot.pk))
    return outcome
