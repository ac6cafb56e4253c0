"""One episode of one robot, from the actor worker's side: lease, plan, simulation, ingestion, next episode.

The simulation itself is Django-free (fleet/sim/); this module binds it to the database and Redis.
"""
from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from actors import outbox
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
        _sim_tasks[env_name] = make_task(env_name, scene_shift=settings.FLEET_SCENE_SHIFT)
    return _sim_tasks[env_name]


def _prepare_process() -> None:
    """Once per worker process: one torch thread per actor, the prefetch listener, and the imports a first episode
    needs (torch, Meta-World; the actor worker's parent imports them before it forks, sopweb.celery, so a pool
    process mostly finds them loaded). It runs under the robot's lease, kept by a thread of its own: sixteen fresh
    pool processes on a loaded 2-core machine have taken 25-90 s here, and a robot without a lease meanwhile is
    one the sweep hands to a second actor (bench/soak.py)."""
    global _torch_ready
    if not _torch_ready:
        import torch

        from actors.policy_cache import cache

        load_libraries()
        torch.set_num_threads(1)
        cache.start_prefetching()
        _torch_ready = True


def load_libraries() -> None:
    """Import what every episode needs (torch, Meta-World): a few seconds of CPU in a fresh process, nothing else
    (no thread, no MuJoCo context), so a parent may call it before it forks its pool."""
    import torch  # noqa: F401

    from fleet.sim.envs import load_metaworld

    load_metaworld()


def _ingest_durably(evaluation_item: int | None = None, **episode) -> Episode | None:
    """Store the episode the robot just spent seconds on, whatever the database does meanwhile: ingestion is
    idempotent by UUID, so a transient failure (a restart, a failover, a deadlock victim) is retried with back-off
    for FLEET_INGEST_RETRY_SECONDS, and an episode the database still refuses to take is kept on disk
    (actors.outbox) and stored later. None when it was kept."""
    from django.db import connection

    deadline = time.monotonic() + settings.FLEET_INGEST_RETRY_SECONDS
    for attempt in itertools.count():
        try:
            episode_row = ingest_episode(**episode)[0]
        except outbox.UNAVAILABLE as exc:
            outbox.database_outage.failed(exc, log)
            connection.close()  # a broken connection must not be reused
            wait = min(5.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.0)  # back-off with jitter
            if time.monotonic() + wait > deadline:
                outbox.keep(episode, evaluation_item)
                return None
            time.sleep(wait)
            continue
        outbox.database_outage.ok(log)
        return episode_row


def run_robot_episode(robot_id: int) -> str:
    """Run the robot's next episode if it should run one. Returns what happened, for logs and tests."""
    bus.degrade(bus.client().delete, bus.scheduled_key(robot_id))
    if outbox.pending():
        outbox.drain()  # episodes kept while the database was away go first
    robot = Robot.objects.filter(pk=robot_id).first()
    if robot is None:
        return "gone"
    if not robot.enabled or robot.status == Robot.Status.PAUSED:
        return "not running"
    if not robot.in_process:
        return "remote"  # it runs its own episodes and reports them over the API
    lease = bus.Lease(bus.lease_key(robot_id), uuid.uuid4().hex, settings.FLEET_LEASE_SECONDS)
    acquired = bus.degrade(lease.acquire)
    if acquired is None:
        return "no lease"  # Redis is away: no new episode; the sweep starts the robot again once it answers
    if not acquired:
        return "busy"  # another episode of this robot is in flight
    try:
        outcome = _run_leased(robot, lease)
    finally:
        bus.degrade(lease.release)  # or it expires by itself
    try:
        robot.refresh_from_db(fields=["enabled", "status", "retired"])
    except outbox.UNAVAILABLE:
        from django.db import connection

        connection.close()
        return outcome  # the database is away: the sweep starts the robot again once it answers
    if robot.wants_episodes and outcome not in ("idle", "kept") and not _told_to_abort(robot_id, outcome):
        control.schedule_episode(robot_id)
    return outcome


def _told_to_abort(robot_id: int, outcome: str) -> bool:
    """An aborted episode queues the next one only if the abort was lifted meanwhile: a robot paused and resumed
    while its episode was aborting. The resume's own episode found this one's lease and gave up ("busy"), so
    without this the resumed robot would wait for the sweep."""
    if outcome != "aborted":
        return False
    return bool(bus.degrade(bus.client().exists, bus.abort_key(robot_id), default=True))


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
        log.exception("robot %s cannot load policy %s", robot.name, version,
                      extra={"robot": robot.name, "version": version.number})
        if evaluation is not None and governance_evaluation.unloadable(evaluation, exc):
            return "candidate unloadable"  # it is rejected; the robot's next episode runs its own version
        control.heartbeat(robot, Robot.Status.IDLE)
        return "idle"
    if evaluation is not None:
        return _Plan(version, policy, evaluation, evaluation.task, evaluation.seed, Episode.Source.EVALUATION,
                     GateConfig.from_dict({**settings.FLEET_GATE, "enabled": False}))
    bus.degrade(mark_ready, robot.pk, version.pk)
    turn = bus.degrade(bus.client().incr, bus.episode_counter_key(robot.pk), default=random.randrange(len(tasks)))
    task_row = tasks[turn % len(tasks)]
    return _Plan(version, policy, None, task_row, online_seed(), Episode.Source.ONLINE,
                 GateConfig.from_dict(settings.FLEET_GATE))


class _Monitor:
    """The episode's `poll`: every POLL_EVERY steps it reads the operator's commands (abort, takeover) and, about
    once a second of wall time, renews the lease, heartbeats and reports progress for the dashboards.

    None of that may cost the episode: with Redis away the robot hears no commands and reports no progress, and
    its lease is neither renewed nor lost (nobody can take it meanwhile; `Lease.renew` takes it back afterwards
    if it expired); with PostgreSQL away it skips its heartbeats. Either way it finishes the episode, which is
    then stored (or kept on disk until it can be)."""

    def __init__(self, robot: Robot, lease: bus.Lease, gate, progress: dict):
        self.robot, self.lease, self.gate, self.progress = robot, lease, gate, progress
        self.last_beat, self.polls = time.monotonic(), 0

    def __call__(self) -> str | None:
        self.polls += 1
        takeover, abort = bus.degrade(bus.client().mget, bus.takeover_key(self.robot.pk),
                                      bus.abort_key(self.robot.pk), default=(None, None))
        now = time.monotonic()
        if now - self.last_beat > 1.0:
            self.last_beat = now
            if bus.degrade(self.lease.renew, default=True) is False:
                return "abort"  # another actor holds the robot now (this worker stalled past the lease)
            # A takeover read just now counts already: the gate hears of it when this poll returns.
            operator, expert = self.gate.operator or bool(takeover), self.gate.in_control
            self.heartbeat(Robot.Status.OPERATOR if operator else Robot.Status.EXPERT if expert
                           else Robot.Status.RUNNING)
            self.progress.update(step=(self.polls - 1) * POLL_EVERY,
                                 control="operator" if operator else "expert" if expert else "policy")
            control.report_progress(self.progress)
        if abort:
            return "abort"
        if takeover:
            return "takeover"
        return None

    def heartbeat(self, status: str) -> None:
        from django.db import connection

        if not outbox.database_outage.due():
            return
        try:
            control.heartbeat(self.robot, status)
        except outbox.UNAVAILABLE as exc:
            outbox.database_outage.failed(exc, log)
            connection.close()
        else:
            outbox.database_outage.ok(log)


def _run_leased(robot: Robot, lease: bus.Lease) -> str:
    from fleet.sim.gate import Gate

    # Until the episode's own poll renews the lease, a thread keeps it: through a fresh process's warm-up, the plan
    # (a checkpoint to load) and the scene's first build, each seconds long on a loaded machine.
    with lease.kept(every=settings.FLEET_LEASE_SECONDS / 4):
        _prepare_process()
        plan = _plan(robot)
        if isinstance(plan, str):
            return plan
        with _giving_back_on_failure(plan):
            sim, gate = sim_task(plan.task.env_name), Gate(plan.gate_config)
    with _giving_back_on_failure(plan):
        return _run_planned(robot, lease, plan, sim, gate)


@contextmanager
def _giving_back_on_failure(plan: _Plan):
    """Whatever ends an evaluation episode early (the worker's time limit, a simulator error), its item goes back
    at once instead of staying claimed for CLAIM_TIMEOUT: the candidate waits for it. An item already recorded is
    complete, and giving it back leaves it so."""
    try:
        yield
    except BaseException:
        if plan.evaluation is not None:
            try:
                governance_evaluation.release(plan.evaluation)
            except Exception:  # the database is away as well: the claim times out instead
                log.warning("could not give back evaluation item %s", plan.evaluation.pk, exc_info=True)
        raise


def _run_planned(robot: Robot, lease: bus.Lease, plan: _Plan, sim, gate) -> str:
    from fleet.sim.actor import run_episode

    task_name = plan.task.env_name
    if lease.lost:  # Redis lost the key and another actor took the robot: it runs the episode, not this one
        if plan.evaluation is not None:
            governance_evaluation.release(plan.evaluation)
        return "busy"
    started_at = timezone.now()
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
    outcome = _store(robot, plan, result, started_at)
    if gate.operator:
        _end_takeover(robot)
    return outcome


def _end_takeover(robot: Robot) -> None:
    """The takeover this episode took up is spent. A takeover no episode took up (asked as this one ended) stays
    for the next one."""
    from django.db import connection

    try:
        control.end_takeover(robot)
    except outbox.UNAVAILABLE as exc:  # the request is gone; the status follows the robot's next reports
        outbox.database_outage.failed(exc, log)
        connection.close()


def _store(robot: Robot, plan: _Plan, result, started_at) -> str:
    """Ingest the finished episode (an evaluation's is recorded against its item)."""
    outcome = {"success": Episode.Outcome.SUCCESS, "timeout": Episode.Outcome.TIMEOUT,
               "aborted": Episode.Outcome.ABORTED}[result.outcome]
    episode = _ingest_durably(
        evaluation_item=plan.evaluation.pk if plan.evaluation is not None else None, uuid=uuid.uuid4(), task=plan.task.env_name, seed=plan.seed, outcome=outcome, arrays=result.arrays,
        started_at=started_at, finished_at=timezone.now(), robot_id=robot.pk, policy_version_id=plan.version.pk,
        source=plan.source,
        meta={"gate": plan.gate_config.as_dict(), "takeovers": result.takeovers,
              "takeover_doubts": result.takeover_doubts,
              "realtime_factor": settings.FLEET_REALTIME_FACTOR, "wall_seconds": round(result.wall_seconds, 3),
              **({"scene_shift": list(settings.FLEET_SCENE_SHIFT)} if settings.FLEET_SCENE_SHIFT else {})},
    )
    if episode is None:
        return "kept"  # on disk until the database takes it (actors.outbox); its evaluation item is recorded then
    log.info("stored episode %s of robot %s: %s, %d steps", episode.uuid, robot.name, outcome, episode.steps,
             extra={"robot": robot.name, "episode": str(episode.uuid), "version": plan.version.number,
                    "task_id": episode.task_id})
    if plan.evaluation is not None:  # a worker that dies before this leaves the item to be claimed again later
        governance_evaluation.record(plan.evaluation, episode)
    return outcome
