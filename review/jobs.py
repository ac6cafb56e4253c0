"""People's requests for review's background work — replay renders and dataset exports — and what bounds them.

Each kind has a per-user rate limit (core.ratelimit, Redis), counted only for a request that would queue new work:
polling a replay that is rendered or on its way costs nothing. Renders also have a system-wide cap on those queued
or rendering (ReplayVideo.check_room); exports a per-user cap on those queued or running
(DatasetExport.check_room). The caps are checked before the rate limit, so a refusal for a full queue costs the
person nothing, and again under a lock as the work is queued, so two requests cannot both take the last place.
A refused request queues nothing.
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction

from core import ratelimit
from fleet.models import Task
from review.models import DatasetExport, RenderQueueFull, ReplayVideo
from review.tasks import export_dataset


def _count_render(user) -> None:
    ratelimit.hit("render", user.pk, limit=settings.REVIEW_RENDER_RATE_LIMIT,
                  window=settings.REVIEW_RENDER_RATE_WINDOW, what="replay renders")


def request_replay(user, episode_id: int) -> ReplayVideo:
    """The episode's replay as `user` asks for it (its review page, replay.json): rendered, on its way or failed.
    RateLimited past the user's render rate, RenderQueueFull past the cap; nothing is queued then."""
    cap = settings.REVIEW_RENDER_QUEUE_MAX
    if ReplayVideo.adds_render(episode_id):
        ReplayVideo.check_room(cap)
        _count_render(user)
    return ReplayVideo.request(episode_id, cap=cap)


def retry_replay(user, video: ReplayVideo):
    """Queue a failed render again for `user` (audited): the same limits as a new render."""
    cap = settings.REVIEW_RENDER_QUEUE_MAX
    if video.status == ReplayVideo.Status.FAILED:
        ReplayVideo.check_room(cap)
        _count_render(user)
    return video.retry(user, cap=cap)


def render_ahead(episode_ids) -> int:
    """Queue renders for the episodes annotators will open next, while the render queue is less than half full:
    people's own requests always have the other half. Returns how many were requested."""
    cap = settings.REVIEW_RENDER_QUEUE_MAX // 2
    for requested, episode_id in enumerate(episode_ids):
        try:
            ReplayVideo.request(episode_id, cap=cap, ahead=True)
        except RenderQueueFull:
            return requested
    return len(episode_ids)


def request_export(user, *, task: Task | None, dispositions: list[str], episodes: int,
                   format: str = "v3.0") -> DatasetExport:
    """Queue a dataset export of `user`'s on the `background` queue. ExportLimitReached while the user has
    REVIEW_EXPORTS_PER_USER exports queued or running, RateLimited past EXPORT_RATE_LIMIT; nothing is queued then."""
    limit = settings.REVIEW_EXPORTS_PER_USER
    DatasetExport.check_room(user, limit)
    ratelimit.hit("export", user.pk, limit=settings.EXPORT_RATE_LIMIT, window=settings.EXPORT_RATE_WINDOW,
                  what="exports")
    with transaction.atomic():
        export = DatasetExport.create_for(user, task=task, dispositions=dispositions, episodes=episodes, limit=limit,
                                          format=format)
        transaction.on_commit(lambda: export_dataset.delay(export.pk))
    return export
