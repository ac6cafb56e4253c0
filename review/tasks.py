"""Celery tasks of episode review: rendering replays and building dataset exports (on the `background` queue, whose
worker runs at low CPU priority); render-ahead and eviction are beat's, on `default`."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from core import metrics, storage

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
                     camera=settings.REVIEW_VIDEO_CAMERA, threads=settings.REVIEW_RENDER_THREADS,
                     stride=settings.REVIEW_VIDEO_STRIDE, antialias=settings.REVIEW_VIDEO_ANTIALIAS)


# acks_late on both background jobs: Celery lets an early-acknowledging worker reserve one more message per process
# while a job runs, and a render-ahead reserved so would go before a person's render queued after it. Acknowledged
# late, the worker (concurrency 1, prefetch 1) holds no message but the job it runs, so its next pop finds the
# person's render on the higher-priority list. Both jobs are idempotent: only a queued job is started.
@shared_task(name="review.render_replay", soft_time_limit=settings.REVIEW_RENDER_TIME_LIMIT,
             time_limit=settings.REVIEW_RENDER_TIME_LIMIT + 30, acks_late=True)
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
    # Rendered into storage's folder, or on object storage into a local file that is uploaded once whole.
    target = storage.local_path(relative) or Path(settings.STORAGE_CACHE_DIR) / "renders" / f"episode-{episode.pk}.mp4"
    try:
        if episode.meta.get("simulator_state") is False:  # review.dataset_import: only what a dataset holds
            raise ReplayError("it was imported from a dataset that holds no simulator state: nothing to replay")
        try:
            arrays = load_arrays(episode)
            episode_data.validate(arrays, episode.task.max_steps)
        except episode_data.EpisodeDataError as exc:
            raise ReplayError(f"its recorded data is corrupt ({exc})") from None
        with metrics.timing(metrics.REPLAY_RENDER_SECONDS):
            info = render_video(_sim_task(episode.task.env_name), episode.seed, arrays, target, video_spec(),
                                progress)
        if not storage.local_path(relative):
            storage.move_in(relative, target)
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
    finally:
        if not storage.local_path(relative):
            target.unlink(missing_ok=True)  # the local copy of an upload, or what a failed render left
    video.finish(relative, info)
    log.info("rendered episode %s: %d frames in %.1f s", episode.pk, info["frames"], info["seconds"])
    return "rendered"


@shared_task(name="review.render_ahead", soft_time_limit=20, time_limit=30)
def render_ahead() -> int:
    """Beat: queue renders for the next unclaimed episodes of the review queue, so they are ready when opened
    (while the render queue is less than half full: review.jobs)."""
    from review.jobs import render_ahead as request_ahead
    from review.queue import upcoming

    return request_ahead(upcoming(count=settings.REVIEW_RENDER_AHEAD))


@shared_task(name="review.evict_old_files", soft_time_limit=120, time_limit=180)
def evict_old_files() -> dict:
    """Beat, hourly: replays are a cache and exports a hand-over. Replays rendered more than REVIEW_REPLAY_KEEP_DAYS
    ago go (unless under review); export zips finished more than REVIEW_EXPORT_KEEP_DAYS ago go (their rows stay,
    expired); exports whose worker died are failed, and their half-built folders removed."""
    from datetime import timedelta

    from review.models import DatasetExport, ReplayVideo

    replays = ReplayVideo.evict(timedelta(days=settings.REVIEW_REPLAY_KEEP_DAYS))
    stopped = DatasetExport.fail_stale()
    exports = DatasetExport.expire(timedelta(days=settings.REVIEW_EXPORT_KEEP_DAYS))
    if replays or stopped or exports:
        log.info("evicted %d old replays and %d old exports; %d dead exports failed", replays, exports, stopped)
    return {"replays": replays, "exports": exports, "stopped": stopped}


class ExportError(Exception):
    """The export cannot be built as asked (its message is shown on the export's page)."""


class ExportStopped(Exception):
    """The export was failed meanwhile (its worker was taken for dead): this job's result counts for nothing."""


@shared_task(name="review.export_dataset", soft_time_limit=settings.REVIEW_EXPORT_TIME_LIMIT,
             time_limit=settings.REVIEW_EXPORT_TIME_LIMIT + 30, acks_late=True)
def export_dataset(export_id: int) -> str:
    """Build one dataset export's zip in storage (idempotent: only a queued job is started, once)."""
    from review.models import DatasetExport, export_workspace

    export = DatasetExport.objects.filter(pk=export_id).select_related("task").first()
    if export is None or not export.start():
        return "nothing to export"
    work = export_workspace() / f"export-{export.pk}.partial"
    try:
        relative, size, episodes = _build_export(export, work)
    except ExportStopped:
        return "stopped"
    except ExportError as exc:
        export.fail(str(exc))
        return "failed"
    except SoftTimeLimitExceeded:
        export.fail(f"the export took longer than {settings.REVIEW_EXPORT_TIME_LIMIT} s; export fewer episodes "
                    "(filter by task), or use `manage.py export_dataset` on the server")
        return "failed"
    except Exception as exc:  # noqa: BLE001 — the person must see something better than an endless progress bar
        log.exception("dataset export %s failed", export.pk)
        export.fail(f"the export failed unexpectedly ({type(exc).__name__}: {exc})")
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not export.finish(relative, size, episodes):  # failed meanwhile: the zip is nobody's
        storage.delete(relative)
        return "stopped"
    log.info("exported %d episodes (%d bytes) for export %s", episodes, size, export.pk)
    return "exported"


def _build_export(export, work: Path) -> tuple[str, int, int]:
    """The dataset (review.export) in `work`, zipped into storage: (relative path, bytes, episodes)."""
    from review.export import export_dataset as write_dataset
    from review.export import labels_to_export

    labels = labels_to_export(export.task, export.dispositions)
    total = labels.count()  # again: labels may have changed since the request
    if total == 0:
        raise ExportError("no labelled episode matches any more: nothing to export")
    if total > settings.REVIEW_EXPORT_MAX_EPISODES:
        raise ExportError(f"{total} episodes match, more than an export job takes "
                          f"({settings.REVIEW_EXPORT_MAX_EPISODES}); use `manage.py export_dataset` on the server")
    every = max(1, total // 50)  # ~50 progress writes; they are also the job's heartbeat

    def progress(done: int) -> None:
        if (done % every == 0 or done == total) and not export.report_progress(0.95 * done / total):
            raise ExportStopped()

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    name = "sopweb-labelled-episodes"
    write_dataset(labels, work / name, progress, version=export.format)
    if not export.report_progress(0.95):  # zipping comes last
        raise ExportStopped()
    archive = shutil.make_archive(str(work / name), "zip", root_dir=work, base_dir=name)
    relative = f"exports/export-{export.pk}.zip"
    size = os.path.getsize(archive)
    storage.move_in(relative, Path(archive))
    return relative, size, total
