"""The learner process: fold new episodes in, train, publish candidates, checkpoint — one time slice per task call.

Only one slice runs at a time (a Redis lease); a killed learner resumes from its last saved state when beat's
`learner.ensure_running` next finds the lease free.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from fleet import bus
from fleet.ingest import load_arrays
from fleet.models import Episode
from learner.models import PolicyVersion, TrainingMetric, TrainingRun, publish_version

log = logging.getLogger(__name__)
LEASE_KEY = "sopweb:learner:lease"
FOLD_BATCH = 200
METRICS_EVERY = 50


def device() -> str:
    import torch

    if settings.LEARNER_DEVICE == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.LEARNER_DEVICE


def start_run(algorithm: str | None = None, actor=None, **overrides) -> TrainingRun:
    """Begin post-training from the deployed version (or the newest one)."""
    from learner.trainer import LearnerConfig

    config = LearnerConfig(algorithm=algorithm or settings.LEARNER_ALGORITHM, batch_size=settings.LEARNER_BATCH_SIZE,
                           lr=settings.LEARNER_LR, publish_every=settings.LEARNER_PUBLISH_EVERY,
                           alpha=settings.LEARNER_RESAMPLER_ALPHA, **overrides)
    base = (PolicyVersion.objects.filter(state=PolicyVersion.State.DEPLOYED).order_by("-number").first()
            or PolicyVersion.objects.order_by("-number").first())
    if base is None:
        raise ValueError("there is no policy version to post-train: pretrain a base policy first")
    from dataclasses import asdict

    from fleet.models import AuditEvent

    with transaction.atomic():
        run = TrainingRun.objects.create(algorithm=config.algorithm, config=asdict(config), base_version=base)
        AuditEvent.record(actor, "learner.start", run, details={"base": base.number, **asdict(config)})
    transaction.on_commit(lambda: _enqueue())
    return run


def _enqueue() -> None:
    from learner.tasks import train

    train.delay()


def _fold(trainer, run: TrainingRun, limit: int = FOLD_BATCH) -> int:
    """Add episodes newer than the run's cursor (online and demonstrations; never evaluation) to the buffer."""
    rows = list(Episode.objects.filter(pk__gt=run.episode_cursor,
                                       source__in=[Episode.Source.ONLINE, Episode.Source.OFFLINE_DEMO])
                .select_related("task", "policy_version").order_by("pk")[:limit])
    for episode in rows:
        source = "offline" if episode.source == Episode.Source.OFFLINE_DEMO else "online"
        version = episode.policy_version.number if episode.policy_version else 0
        trainer.add_episode(episode.task.env_name, source, load_arrays(episode), version, episode.task.max_steps)
    if rows:
        run.episode_cursor = rows[-1].pk
    # Skip past evaluation episodes too, so the cursor never stalls behind them.
    newest = Episode.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    if len(rows) < limit:
        run.episode_cursor = max(run.episode_cursor, newest)
    return len(rows)


def _load_or_build(run: TrainingRun):
    from learner.policy import load_checkpoint
    from learner.trainer import LearnerConfig, Trainer

    if run.state_path and (Path(settings.STORAGE_DIR) / run.state_path / "state.json").exists():
        trainer, extra = Trainer.load(Path(settings.STORAGE_DIR) / run.state_path, device())
        run.episode_cursor = extra.get("episode_cursor", 0)
        # The buffer is not part of the saved state: rebuild it from the table once, up to the saved cursor.
        cursor, run.episode_cursor = run.episode_cursor, 0
        while run.episode_cursor < cursor and _fold(trainer, run):
            pass
        run.episode_cursor = max(run.episode_cursor, cursor)
        return trainer
    base = run.base_version
    policy = load_checkpoint(Path(settings.STORAGE_DIR) / base.checkpoint_path, base.checkpoint_sha256)
    trainer = Trainer(policy, LearnerConfig(**run.config), device())
    trainer.version = base.number
    if trainer.algorithm.needs_pretraining:
        # Fitted once before online training (RECAP's value function): every demonstration and rollout so far.
        history = Episode.objects.filter(
            source__in=[Episode.Source.ONLINE, Episode.Source.OFFLINE_DEMO]).select_related("task")
        trainer.algorithm.pretrain([
            (e.task.env_name, "offline" if e.source == Episode.Source.OFFLINE_DEMO else "online", load_arrays(e),
             e.task.max_steps) for e in history])
    return trainer


def _save(trainer, run: TrainingRun) -> None:
    run.state_path = run.state_path or f"learner/run-{run.pk}"
    trainer.save(Path(settings.STORAGE_DIR) / run.state_path, extra={"episode_cursor": run.episode_cursor})
    TrainingRun.objects.filter(pk=run.pk).update(state_path=run.state_path, step=trainer.step,
                                                 episode_cursor=run.episode_cursor)


def _publish(trainer, run: TrainingRun) -> PolicyVersion:
    parent = PolicyVersion.objects.filter(number=trainer.version).first()
    snapshot = copy.deepcopy(trainer.policy).cpu().eval()
    version = publish_version(
        snapshot, algorithm=trainer.config.algorithm, parent=parent,
        config={**run.config, "run": run.pk, "step": trainer.step},
        train_steps=trainer.step, samples_online=trainer.samples["online"],
        samples_offline=trainer.samples["offline"], samples_intervention=trainer.samples["intervention"],
        first_episode_id=Episode.objects.filter(source=Episode.Source.ONLINE).order_by("pk")
        .values_list("pk", flat=True).first(), last_episode_id=run.episode_cursor,
    )
    trainer.version = version.number
    if settings.ROLLOUT_MODE == "continuous":
        version.deploy_to_fleet(reason=f"continuous mode: {run} step {trainer.step}")
    return version


def run_slice(seconds: float | None = None) -> str:
    """Train the active run for up to `seconds`, then save and hand over to the next slice."""
    run = TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).select_related("base_version").first()
    if run is None:
        return "no active run"
    lease = bus.Lease(LEASE_KEY, f"learner-{time.time()}", ttl=120.0)
    if not lease.acquire():
        return "busy"
    try:
        trainer = _load_or_build(run)
        deadline = time.monotonic() + (seconds or settings.LEARNER_SLICE_SECONDS)
        pubsub = bus.client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(bus.EPISODES_CHANNEL)
        _fold(trainer, run)
        window_start, window_samples, last_renew = time.monotonic(), 0, time.monotonic()
        while time.monotonic() < deadline:
            if pubsub.get_message(timeout=0) is not None:  # nudged: new episodes were ingested
                while pubsub.get_message(timeout=0) is not None:
                    pass
                _fold(trainer, run)
            metrics = trainer.train_step()
            if metrics is None:
                time.sleep(0.5)
                _fold(trainer, run)
                continue
            window_samples += trainer.config.batch_size
            if trainer.step % METRICS_EVERY == 0:
                now = time.monotonic()
                sizes = trainer.buffer.sizes()
                TrainingMetric.objects.create(
                    run=run, step=trainer.step, loss=metrics["loss"],
                    samples_per_second=window_samples / max(now - window_start, 1e-6),
                    staleness_mean=metrics["staleness_mean"], staleness_max=metrics["staleness_max"],
                    tasks={task: {**stats, "buffer": sizes[task]} for task, stats in trainer.resampler.stats().items()},
                )
                window_start, window_samples = now, 0
                if now - last_renew > 10:
                    lease.renew()
                    last_renew = now
                if not TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
                    break  # stopped by someone
            if trainer.step % trainer.config.publish_every == 0:
                _save(trainer, run)  # state first: a crash after this publishes the next version afresh
                version = _publish(trainer, run)
                log.info("published %s at step %d", version, trainer.step)
        _save(trainer, run)
        pubsub.close()
    finally:
        lease.release()
    if TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.ACTIVE).exists():
        _enqueue()
    return f"trained to step {trainer.step}"
