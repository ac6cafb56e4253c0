"""The learner process: fold new episodes in, train, publish candidates, checkpoint — one time slice per task call.

Only one slice runs at a time (a Redis lease, renewed by a thread every LEARNER_LEASE_SECONDS / 4 and so short
that a killed learner's lease is gone within LEARNER_LEASE_SECONDS); beat's `learner.ensure_running`, every
LEARNER_WATCHDOG_SECONDS, then queues a slice that resumes from the last saved state. State is saved every
LEARNER_SAVE_SECONDS (and before every published version), so a crash costs at most that much training.

At most one slice is queued at a time: each queued slice carries a token, `bus.LEARNER_QUEUED_KEY` holds the
token of the newest, and a slice whose token is not the newest one returns at once. A watchdog racing the end of a
slice therefore never starts a second chain of slices.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import redis
from django.conf import settings
from django.db import transaction

from core import bus, storage
from core import metrics as prometheus
from core.events import broadcast
from core.models import AuditEvent
from core.outages import Outage
from fleet.ingest import load_arrays
from fleet.models import Episode
from fleet.sim.episode_data import EpisodeDataError
from learner.models import PolicyVersion, TrainingMetric, TrainingRun, publish_version
from learner.signals import version_published
from review.models import EpisodeLabel

log = logging.getLogger(__name__)
LEASE_KEY = bus.LEARNER_LEASE_KEY
FOLD_BATCH = 200
METRICS_EVERY = 50
nudge_outage = Outage("Redis (learner nudges)")
LABEL_POLL_SECONDS = 10.0  # labels are also picked up at once when a label's nudge arrives


_resident: dict = {}  # this process's trainer between slices: {"run": id, "trainer", "cursor", "labels"}


def configure_threads() -> None:
    """Torch's intra-op threads as LEARNER_TORCH_THREADS says (not one per core: see the setting)."""
    import torch

    if torch.get_num_threads() != settings.LEARNER_TORCH_THREADS:
        torch.set_num_threads(settings.LEARNER_TORCH_THREADS)


def device() -> str:
    import torch

    if settings.LEARNER_DEVICE == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.LEARNER_DEVICE


def start_run(algorithm: str | None = None, actor=None, **overrides) -> TrainingRun:
    """Begin post-training from the deployed version (or the newest one)."""
    from learner.trainer import LearnerConfig

    fields = dict(algorithm=algorithm or settings.LEARNER_ALGORITHM, batch_size=settings.LEARNER_BATCH_SIZE,
                  lr=settings.LEARNER_LR, publish_every=settings.LEARNER_PUBLISH_EVERY,
                  alpha=settings.LEARNER_RESAMPLER_ALPHA, resampler_scale=settings.LEARNER_RESAMPLER_SCALE,
                  recap_value_steps=settings.LEARNER_RECAP_VALUE_STEPS,
                  steps_per_robot_second=settings.LEARNER_STEPS_PER_ROBOT_SECOND,
                  robot_pace=settings.FLEET_REALTIME_FACTOR or 1.0)
    config = LearnerConfig(**{**fields, **overrides})  # what the caller names wins over the settings
    if config.batch_size % settings.LEARNER_WORLD_SIZE:
        raise ValueError(f"a batch of {config.batch_size} does not split evenly among the "
                         f"{settings.LEARNER_WORLD_SIZE} processes of the data-parallel learner")
    base = PolicyVersion.deployed() or PolicyVersion.objects.order_by("-number").first()
    if base is None:
        raise ValueError("there is no policy version to post-train: pretrain a base policy first")
    from dataclasses import asdict

    with transaction.atomic():
        run = TrainingRun.objects.create(algorithm=config.algorithm, config=asdict(config), base_version=base)
        AuditEvent.record(actor, "learner.start", run, details={"base": base.number, **asdict(config)})
    transaction.on_commit(lambda: _enqueue())
    return run


def _enqueue() -> None:
    """Queue the next slice, superseding any slice queued before it (see the module's docstring). A data-parallel
    learner (LEARNER_WORLD_SIZE > 1) runs its slices one after another itself: nothing is queued."""
    import uuid

    if settings.LEARNER_WORLD_SIZE > 1:
        return

    from learner.tasks import train

    token = uuid.uuid4().hex
    # Kept for a minute: a slice still queued after that (no learner worker) is superseded by the watchdog's next.
    bus.degrade(bus.client().set, bus.LEARNER_QUEUED_KEY, token, ex=60)
    train.delay(token=token)


def _superseded(token: str | None) -> bool:
    """Whether a newer slice was queued since this one (its token is no longer the queued one). With Redis away
    nothing can be told, and the lease still keeps slices apart."""
    if token is None:
        return False  # queued by hand, without a token
    queued = bus.degrade(bus.client().get, bus.LEARNER_QUEUED_KEY, default=token.encode())
    if queued != token.encode():
        return True
    bus.degrade(bus.client().delete, bus.LEARNER_QUEUED_KEY)  # started: the lease guards it from here
    return False


class EpisodeCursor:
    """Which episodes the buffer holds. Ids are assigned at INSERT but become visible at COMMIT, so an episode
    can appear after a higher id did: the cursor re-reads a window below its high-water mark and skips what it
    already folded."""

    LATE_COMMIT_WINDOW = 1000  # ids; far more than the episodes concurrently in flight between insert and commit

    def __init__(self):
        self.high = 0
        self.recent: set[int] = set()

    def new_episodes(self, limit: int):
        floor = max(0, self.high - self.LATE_COMMIT_WINDOW)
        self.recent = {pk for pk in self.recent if pk > floor}
        return list(Episode.objects.filter(pk__gt=floor, source__in=TRAINING_SOURCES)
                    .exclude(pk__in=self.recent).select_related("task", "policy_version", "label")
                    .order_by("pk")[:limit])

    def mark(self, pk: int) -> None:
        self.recent.add(pk)
        self.high = max(self.high, pk)

    def folded(self, pk: int) -> bool:
        """Whether this (training-source) episode has been folded in: below the late-commit window everything
        committed was, within it exactly what was marked."""
        return pk in self.recent or pk <= max(0, self.high - self.LATE_COMMIT_WINDOW)


TRAINING_SOURCES = [Episode.Source.ONLINE, Episode.Source.OFFLINE_DEMO]


class LabelSync:
    """Keeps the buffer in step with annotators' labels, also for episodes folded in before they were labelled
    (or relabelled, or whose label changed back to "keep").

    Only exclude and relabel change what an episode teaches, so only those labels are read — all of them at
    each poll, and compared with what the buffer holds (`applied`). Reading the whole set rather than "labels
    changed since" needs no clock and no late-commit window, and it sees a label that was deleted; it costs one
    row per excluded or relabelled episode per poll, which annotators produce by hand."""

    def __init__(self):
        self.applied: dict[int, tuple] = {}  # episode id -> (disposition, failure_step) its frames reflect

    @staticmethod
    def key(label: EpisodeLabel | None) -> tuple | None:
        if label is None or label.disposition == EpisodeLabel.Disposition.KEEP:
            return None
        return (label.disposition, label.failure_step)

    def note(self, episode_id: int, label: EpisodeLabel | None) -> None:
        key = self.key(label)
        if key is None:
            self.applied.pop(episode_id, None)
        else:
            self.applied[episode_id] = key

    def changed(self, cursor: EpisodeCursor) -> list[int]:
        """Folded episodes whose label now says something other than what their frames in the buffer reflect."""
        current = {eid: (disposition, step) for eid, disposition, step in EpisodeLabel.objects
                   .exclude(disposition=EpisodeLabel.Disposition.KEEP)
                   .filter(episode__source__in=TRAINING_SOURCES)
                   .values_list("episode_id", "disposition", "failure_step")}
        candidates = {eid for eid, key in current.items() if self.applied.get(eid) != key}
        candidates |= set(self.applied) - set(current)  # back to "keep", or the label was deleted
        return sorted(eid for eid in candidates if cursor.folded(eid))


def sync_labels(trainer, cursor: EpisodeCursor, labels: LabelSync) -> int:
    """Take the frames of episodes whose label changed out of the buffer and fold them in again under their
    label (nothing for an excluded episode). Returns how many episodes changed."""
    changed = labels.changed(cursor)
    if not changed:
        return 0
    removed = trainer.remove_episodes(changed)
    episodes = Episode.objects.filter(pk__in=changed).select_related("task", "policy_version", "label")
    for episode in episodes:
        _add(trainer, episode, None, cursor, labels)
    log.info("labels changed for %d folded episode(s): %d frames taken out, folded again under their labels",
             len(changed), removed)
    return len(changed)


def _source(episode: Episode) -> str:
    return "offline" if episode.source == Episode.Source.OFFLINE_DEMO else "online"


def _label(episode: Episode) -> EpisodeLabel | None:
    try:
        return episode.label
    except EpisodeLabel.DoesNotExist:
        return None


# What folding one episode can raise about that episode alone (an unreadable payload, a label that does not fit
# it): the episode is skipped and reported, and the learner goes on. Anything else (the database, the lease) stops
# the slice as before.
UNFOLDABLE = (EpisodeDataError, ValueError, TypeError, KeyError, IndexError)


def _training_arrays(episode: Episode, label: EpisodeLabel | None, arrays: dict | None) -> dict | None:
    """What the episode teaches under its label (None: nothing). Raises one of UNFOLDABLE."""
    arrays = load_arrays(episode) if arrays is None else arrays
    return label.training_arrays(arrays) if label is not None else arrays


def _add(trainer, episode: Episode, arrays: dict | None, cursor: EpisodeCursor, labels: LabelSync) -> None:
    """Fold one episode in as its label says: as recorded, not at all (excluded), or relabelled; an episode that
    cannot be folded is skipped and reported (_skip)."""
    label = _label(episode)  # noted even when skipped: the label is what the buffer reflects, not asked again
    try:
        training = _training_arrays(episode, label, arrays)
        if training is not None:
            version = episode.policy_version.number if episode.policy_version else 0
            trainer.add_episode(episode.task.env_name, _source(episode), training, version,
                                episode.task.max_steps, episode_id=episode.pk)
    except UNFOLDABLE as exc:
        _skip(episode, exc)
    labels.note(episode.pk, label)
    cursor.mark(episode.pk)


def _skip(episode: Episode, exc: Exception) -> None:
    """Report an episode the learner cannot fold: a warning in its log, and once per episode and reason an audit
    row on the episode (the audit page and the episode's history show it)."""
    reason = f"{type(exc).__name__}: {exc}"[:500]
    log.warning("episode %s skipped: it cannot be folded into the buffer (%s)", episode.pk, reason)
    if not AuditEvent.objects.filter(verb="learner.skip_episode", object_type=episode._meta.label_lower,
                                     object_id=str(episode.pk), reason=reason).exists():
        AuditEvent.record(None, "learner.skip_episode", episode, reason=reason)


def _fold(trainer, cursor: EpisodeCursor, labels: LabelSync, limit: int = FOLD_BATCH) -> int:
    """Add new online episodes and demonstrations (never evaluation episodes) to the buffer."""
    rows = cursor.new_episodes(limit)
    for episode in rows:
        _add(trainer, episode, None, cursor, labels)
    return len(rows)


def _pretrain_then_fold(trainer, cursor: EpisodeCursor, labels: LabelSync, lease) -> None:
    """Fit what the algorithm fits once (RECAP's value function) on every episode so far (excluded ones left
    out), then fold the same episodes in: each payload is read once."""
    history = []
    while rows := cursor.new_episodes(FOLD_BATCH):
        for episode in rows:
            try:
                history.append((episode, load_arrays(episode)))
            except UNFOLDABLE as exc:
                _skip(episode, exc)
                labels.note(episode.pk, _label(episode))
            cursor.mark(episode.pk)
        _renew(lease)
    fitted = []
    for episode, arrays in history:
        try:
            training = _training_arrays(episode, _label(episode), arrays)
        except UNFOLDABLE:
            continue  # reported when it is folded below
        if training is not None:
            fitted.append((episode.task.env_name, _source(episode), training, episode.task.max_steps))
    trainer.algorithm.pretrain(fitted)
    for episode, arrays in history:
        _add(trainer, episode, arrays, cursor, labels)


def _load_or_build(run: TrainingRun):
    """The run's trainer, and whether it was resumed from saved state (else it starts from the base version)."""
    from learner.checkpoint_store import local_dir
    from learner.policy import load_checkpoint
    from learner.trainer import LearnerConfig, Trainer

    saved = _saved_state(run)
    if saved is not None:
        # The buffer is not part of the saved state: the caller rebuilds it from the table, once.
        trainer, _ = Trainer.load(saved, device())
        return _joined(trainer), True
    base = run.base_version
    policy = load_checkpoint(local_dir(base.checkpoint_path, base.checkpoint_sha256), base.checkpoint_sha256)
    trainer = Trainer(policy, LearnerConfig(**run.config), device())
    trainer.version = base.number
    return _joined(trainer), False


def _joined(trainer):
    """In a data-parallel group (learner.distributed), every rank gets a replica of a trainer rank 0 builds."""
    if settings.LEARNER_WORLD_SIZE > 1:
        from learner import distributed

        if (group := distributed.current()) is not None:
            group.attach(trainer)
    return trainer


STATE_FILES = ("state.safetensors", "state.json")


def _state_cache(run: TrainingRun) -> Path:
    return Path(settings.STORAGE_CACHE_DIR) / "learner" / f"run-{run.pk}"


def _saved_state(run: TrainingRun) -> Path | None:
    """A local folder holding the run's saved state, or None when it has none. On object storage the state is
    fetched, whichever host saved it: the learner may resume on another one."""
    if not run.state_path:
        return None
    local = storage.local_path(run.state_path)
    if local is not None:
        return local if (local / "state.json").exists() else None
    cache = _state_cache(run)
    try:
        for name in STATE_FILES:
            storage.download(f"{run.state_path}/{name}", cache / name)
    except FileNotFoundError:
        return None
    return cache


def _save(trainer, run: TrainingRun, cursor: EpisodeCursor) -> None:
    """Save the resumable state. In a folder: swapped in atomically (Trainer.save). On object storage: written under
    a new name per save and then pointed at from the row, so a crash mid-upload leaves the previous state whole."""
    extra = {"episode_cursor": cursor.high}
    previous = run.state_path
    if storage.remote():
        cache = _state_cache(run)
        trainer.save(cache, extra=extra)
        run.state_path = f"learner/run-{run.pk}/step-{trainer.step}"
        for name in STATE_FILES:
            storage.upload(f"{run.state_path}/{name}", cache / name)
    else:
        run.state_path = previous if previous and "/step-" not in previous else f"learner/run-{run.pk}"
        trainer.save(storage.local_path(run.state_path), extra=extra)
    run.episode_cursor = cursor.high
    TrainingRun.objects.filter(pk=run.pk).update(state_path=run.state_path, step=trainer.step,
                                                 episode_cursor=cursor.high)
    if previous and previous != run.state_path and storage.remote():
        storage.delete_folder(previous)


def _publish(trainer, run: TrainingRun, cursor: EpisodeCursor) -> PolicyVersion:
    parent = PolicyVersion.objects.filter(number=trainer.version).first()
    snapshot = copy.deepcopy(trainer.policy).cpu().eval()
    version = publish_version(
        snapshot, algorithm=trainer.config.algorithm, parent=parent,
        config={**run.config, "run": run.pk, "step": trainer.step},
        train_steps=trainer.step, samples_online=trainer.samples["online"],
        samples_offline=trainer.samples["offline"], samples_intervention=trainer.samples["intervention"],
        first_episode_id=Episode.objects.filter(source=Episode.Source.ONLINE).order_by("pk")
        .values_list("pk", flat=True).first(), last_episode_id=cursor.high,
    )
    trainer.version = version.number
    # Continuous mode deploys it at once; otherwise it waits for a rule or a supervisor (governance decides).
    version_published.send(sender=PolicyVersion, version=version, deploy=None)
    return version


class LeaseLost(Exception):
    """Another learner process holds the lease now: the run's state is no longer this slice's to save."""


def _renew(lease) -> None:
    """Before acting as the holder (saving, publishing): the lease must still be this slice's."""
    if lease.lost or bus.degrade(lease.renew, default=True) is False:
        raise LeaseLost


def lease_token() -> str:
    """Who holds the learner's lease: `learner-<pid>-<time>`, so an operator (or a test) can tell which process
    trains."""
    return f"learner-{os.getpid()}-{time.time():.3f}"


def run_slice(seconds: float | None = None, token: str | None = None) -> str:
    """Train the active run for up to `seconds`, then save and hand over to the next slice."""
    if not TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).exists():
        return "no active run"
    if _superseded(token):
        return "superseded"
    lease = bus.Lease(LEASE_KEY, lease_token(), ttl=settings.LEARNER_LEASE_SECONDS)
    if not bus.degrade(lease.acquire, default=False):
        return "busy"  # another slice trains (or Redis is away: the watchdog queues one when it answers)
    with lease.kept(every=settings.LEARNER_LEASE_SECONDS / 4):
        return _run_leased_slice(lease, seconds)


def _run_leased_slice(lease, seconds: float | None) -> str:
    pubsub = None
    try:
        # Read under the lease: a run read before it could be a step behind a slice that ended in between.
        run = TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).select_related("base_version").first()
        if run is None:
            return "no active run"
        # The slice's time includes rebuilding the buffer (and RECAP's value fit): the task's time limits allow the
        # slice plus a margin, not the slice plus a rebuild.
        deadline = time.monotonic() + (seconds or settings.LEARNER_SLICE_SECONDS)
        configure_threads()
        pubsub = bus.client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(bus.EPISODES_CHANNEL)
        if (waiting := _waiting_for_base_rollouts(run, deadline, lease)) is not None:
            if TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
                _enqueue()  # while the lease is held, as below
            return waiting
        trainer, cursor, labels, resumed_from = _trainer_for(run, lease)
        _train_until(deadline, run, trainer, cursor, labels, lease, pubsub, resumed_from)
        _renew(lease)  # only the lease holder's state is the run's
        _save(trainer, run, cursor)
        if TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
            _resident.update(run=run.pk, trainer=trainer, cursor=cursor, labels=labels)
            _enqueue()  # while the lease is still held: the watchdog never sees neither a lease nor a queued slice
    except LeaseLost:
        log.warning("another learner took the lease over: this slice stops without saving")
        return "lease lost"
    finally:
        try:
            if pubsub is not None:
                pubsub.close()
        finally:
            bus.degrade(lease.release)
    return f"trained to step {trainer.step}"


def base_rollouts(run: TrainingRun) -> dict[str, int]:
    """Online episodes of the run's base version per task the fleet runs (tasks no robot is assigned never get
    any: they are not waited for)."""
    from django.db.models import Count

    from fleet.models import Robot

    assigned = set(Robot.objects.filter(enabled=True).values_list("tasks__env_name", flat=True)) - {None}
    counts = dict(Episode.objects.filter(source=Episode.Source.ONLINE, policy_version=run.base_version,
                                         task__env_name__in=assigned)
                  .values_list("task__env_name").annotate(n=Count("id")))
    return {task: counts.get(task, 0) for task in sorted(assigned)}


def _waiting_for_base_rollouts(run: TrainingRun, deadline: float, lease) -> str | None:
    """RECAP fits its value function once, on the demonstrations and the base version's rollouts: a fit on the
    demonstrations alone sees only successes. A new run (nothing saved yet) whose algorithm fits first waits until
    every task the fleet runs has LEARNER_RECAP_BASE_ROLLOUTS online episodes of the base version, or until the
    slice's deadline (then the next slice waits on). Returns None when training may start."""
    from learner.algorithms import get

    wanted = settings.LEARNER_RECAP_BASE_ROLLOUTS
    if not wanted or run.state_path or not get(run.algorithm).needs_pretraining:
        return None
    while True:
        counts = base_rollouts(run)
        if all(n >= wanted for n in counts.values()):
            log.info("base rollouts per task %s (%d wanted): fitting and training start", counts, wanted)
            return None
        if time.monotonic() >= deadline or not TrainingRun.objects.filter(
                pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
            return f"waiting for base rollouts: {counts}, {wanted} per task wanted"
        _renew(lease)
        time.sleep(1.0)


def _trainer_for(run: TrainingRun, lease) -> tuple:
    """The run's trainer, cursor and label state, with every episode so far in the buffer: this process's own from
    its previous slice when nobody has trained the run since (the saved step is still its own), else rebuilt from
    the saved state (or the base) and the table. A slice that fails leaves nothing to reuse. The fourth value is
    the saved step a rebuilt trainer resumed from (a restart), else None."""
    previous = dict(_resident)
    _resident.clear()
    resumed_from = None
    if previous.get("run") == run.pk and previous["trainer"].step == run.step:
        trainer, cursor, labels = previous["trainer"], previous["cursor"], previous["labels"]
        sync_labels(trainer, cursor, labels)  # labels saved between slices: nobody heard their nudge
    else:
        previous = None  # let the old trainer go before a new one is built
        trainer, resumed = _load_or_build(run)
        resumed_from = trainer.step if resumed else None
        cursor, labels = EpisodeCursor(), LabelSync()
        if not resumed and trainer.algorithm.needs_pretraining:
            _pretrain_then_fold(trainer, cursor, labels, lease)
    while _fold(trainer, cursor, labels):  # a rebuilt buffer reads the whole history here
        _renew(lease)
    return trainer, cursor, labels, resumed_from


def _take_news(trainer, cursor: EpisodeCursor, labels: LabelSync, pubsub, last_label_poll: float) -> float:
    """Fold in what a nudge announced (new episodes, changed labels); poll labels when no nudge came for a while.
    Returns when labels were last read. With Redis away no nudge arrives: episodes and labels are polled."""
    if not nudge_outage.due():
        nudged = False
    else:
        try:
            nudged = pubsub.get_message(timeout=0) is not None
            while nudged and pubsub.get_message(timeout=0) is not None:
                pass
        except redis.RedisError as exc:  # the subscription reconnects (and subscribes again) at a later call
            nudge_outage.failed(exc, log)
            nudged = False
        else:
            nudge_outage.ok(log)
    if nudged or (nudge_outage.since is not None and time.monotonic() - last_label_poll > 1.0):
        _fold(trainer, cursor, labels)
        sync_labels(trainer, cursor, labels)
        return time.monotonic()
    if time.monotonic() - last_label_poll > LABEL_POLL_SECONDS:  # a nudge lost to a Redis hiccup
        sync_labels(trainer, cursor, labels)
        return time.monotonic()
    return last_label_poll


def _record_metrics(run: TrainingRun, trainer, metrics: dict, samples_per_second: float,
                    resumed_from: int | None = None) -> None:
    sizes, extra = trainer.buffer.sizes(), trainer.algorithm.task_stats()
    shares = trainer.resampler.stats()
    prometheus.learner_window(samples_per_second, metrics["loss"], metrics["staleness_mean"],
                              {task: stats["w_on"] for task, stats in shares.items()})
    metric = TrainingMetric.objects.create(
        run=run, step=trainer.step, loss=metrics["loss"], samples_per_second=samples_per_second,
        staleness_mean=metrics["staleness_mean"], staleness_max=metrics["staleness_max"],
        tasks={task: {**stats, **extra.get(task, {}), "buffer": sizes[task]}
               for task, stats in shares.items()},
        resumed_from=resumed_from,
    )
    broadcast("learner.metrics", metric.point())


def _ahead_of_clock(run: TrainingRun, trainer) -> float:
    """Under the controlled clock (LearnerConfig.steps_per_robot_second), the seconds until the next step is due:
    step n is due once n / rate seconds of robot time have passed since the run started. 0 when due, or unpaced."""
    rate = trainer.config.steps_per_robot_second
    if not rate:
        return 0.0
    robot_seconds = (time.time() - run.created_at.timestamp()) * trainer.config.robot_pace
    return (trainer.step + 1 - rate * robot_seconds) / (rate * trainer.config.robot_pace)


def _train_until(deadline: float, run: TrainingRun, trainer, cursor: EpisodeCursor, labels: LabelSync, lease,
                 pubsub, resumed_from: int | None = None) -> None:
    """Gradient steps until the deadline or until someone stops the run: news folded in as it arrives, a metric
    every METRICS_EVERY steps (the first marked with `resumed_from` after a restart), a published version every
    `publish_every` steps."""
    window_start, window_samples = time.monotonic(), 0
    last_save = last_label_poll = time.monotonic()
    while time.monotonic() < deadline:
        if lease.lost:
            raise LeaseLost
        if time.monotonic() - last_save > settings.LEARNER_SAVE_SECONDS:  # a crash loses at most this much
            _renew(lease)
            _save(trainer, run, cursor)
            last_save = time.monotonic()
        last_label_poll = _take_news(trainer, cursor, labels, pubsub, last_label_poll)
        if (wait := _ahead_of_clock(run, trainer)) > 0:
            time.sleep(min(wait, 0.1))  # the controlled clock: news and the lease are looked after meanwhile
            continue
        metrics = trainer.train_step()
        if metrics is None:  # nothing to train on yet: wait for episodes (labels keep their own poll above)
            time.sleep(0.5)
            _fold(trainer, cursor, labels)
            continue
        window_samples += trainer.config.batch_size
        prometheus.learner_step()
        if trainer.step % METRICS_EVERY == 0:
            now = time.monotonic()
            _record_metrics(run, trainer, metrics, window_samples / max(now - window_start, 1e-6), resumed_from)
            window_start, window_samples, resumed_from = now, 0, None
            if not TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
                return  # stopped by someone
        if trainer.step % trainer.config.publish_every == 0:
            _renew(lease)  # only the lease holder publishes: the run's versions form one line
            _save(trainer, run, cursor)  # state first: a crash after this publishes the next version afresh
            last_save = time.monotonic()
            version = _publish(trainer, run, cursor)
            log.info("published %s at step %d", version, trainer.step, extra={"version": version.number})
