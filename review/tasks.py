"""Celery tasks of episode review: rendering replays (on the `background` queue, whose worker runs at low CPU
priority), ahead of annotators and on demand; render-ahead and eviction are beat's, on `default`."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

log = logging.getLogger(__name__)
_sim_tasks: dict = {}  # env name -> SimTask, this process's own (the actor's scenes are stepped by episodes)


def _sim_task(env_name: str):
    from fleet.sim.envs import make_task

    if env_name not in _sim_tasks:
        _sim_tasks[env_name] = make_task(env_name)
    return _sim_tasks[env_name]


def video_spec():
    from fleet.sim.replay import VideoSpec

    return VideoSpec(width=settings.REVIEW_VIDEO_WIDTH, height=settings.REVIEW_VIDEO_HEIGHT,
                     camera=settings.REVIEW_VIDEO_CAMERA, threads=settings.REVIEW_RENDER_THREADS)


@shared_task(name="review.render_replay", soft_time_limit=settings.REVIEW_RENDER_TIME_LIMIT,
             time_limit=settings.REVIEW_RENDER_TIME_LIMIT + 30)
def render_replay(episode_id: int) -> str:
    """Render one episode's replay video into storage (idempotent: only a queued job is started, once)."""
    from fleet.ingest import load_arrays
    from fleet.sim import episode_data
    from fleet.sim.envs import UnknownTask
    from fleet.sim.replay import ReplayError, render_video
    from review.models import ReplayVideo

    video = ReplayVideo.objects.filter(pk=episode_id).select_related("episode__task").first()
    if video is None or not video.start():
        return "nothing to render"
    episode = video.episode
    step = max(1, episode.steps // 40)  # ~40 progress writes per video

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            video.report_progress(done / total)

    relative = f"replays/episode-{episode.pk}.mp4"
    try:
        try:
            arrays = load_arrays(episode)
            episode_data.validate(arrays, episode.task.max_steps)
        except episode_data.EpisodeDataError as exc:
            raise ReplayError(f"its recorded data is corrupt ({exc})") from None
        info = render_video(_sim_task(episode.task.env_name), episode.seed, arrays,
                            settings.STORAGE_DIR / relative, video_spec(), progress)
    except (ReplayError, UnknownTask) as exc:
        video.fail(f"Cannot replay episode {episode.pk} ({episode.task}): {exc}")
        return "failed"
    except SoftTimeLimitExceeded:
        video.fail(f"Rendering episode {episode.pk} took longer than {settings.REVIEW_RENDER_TIME_LIMIT} s")
        return "failed"
    except Exception as exc:  # noqa: BLE001 — the annotator must see something better than an endless spinner
        log.exception("rendering episode %s failed", episode.pk)
        video.fail(f"Rendering episode {episode.pk} failed unexpectedly ({type(exc).__name__}: {exc})")
        return "failed"
    video.finish(relative, info)
    log.info("rendered episode %s: %d frames in %.1f s", episode.pk, info["frames"], info["seconds"])
    return "rendered"


@shared_task(name="review.render_ahead", soft_time_limit=20, time_limit=30)
def render_ahead() -> int:
    """Beat: queue renders for the next unclaimed episodes of the review queue, so they are ready when opened."""
    from review.models import ReplayVideo
    from review.queue import upcoming

    ids = upcoming(count=settings.REVIEW_RENDER_AHEAD)
    for episode_id in ids:
        ReplayVideo.request(episode_id)
    return len(ids)


@shared_task(name="review.evict_replays", soft_time_limit=120, time_limit=180)
def evict_replays() -> int:
    """Beat: replays are a cache; those rendered more than REVIEW_REPLAY_KEEP_DAYS ago go (review.models)."""
    from datetime import timedelta

    from review.models import ReplayVideo

    evicted = ReplayVideo.evict(timedelta(days=settings.REVIEW_REPLAY_KEEP_DAYS))
    if evicted:
        log.info("evicted %d old replays", evicted)
    return evicted
