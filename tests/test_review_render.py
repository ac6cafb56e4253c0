"""Replays rendered by a real Celery worker on `background` from the recorded simulator state: videos that browsers
play, ahead of the annotators and on demand, and clear errors (with a retry) for episodes that cannot replay."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from fleet.models import Task
from review.models import ReplayVideo, ReviewClaim
from tests.conftest import wait_for
from tests.reviewing import ingest, recorded

pytestmark = pytest.mark.django_db(transaction=True)
SMALL = {"REVIEW_VIDEO_WIDTH": 160, "REVIEW_VIDEO_HEIGHT": 128}


def finished(episode_id: int, timeout: float = 90) -> ReplayVideo:
    def done():
        video = ReplayVideo.objects.get(pk=episode_id)
        return video if video.status in (ReplayVideo.Status.READY, ReplayVideo.Status.FAILED) else None
    return wait_for(done, timeout, f"the replay of episode {episode_id}", interval=0.2)


def test_rendering_runs_on_the_background_queue_and_render_ahead_on_default():
    from sopweb.celery import app

    assert app.amqp.router.route({}, "review.render_replay")["queue"].name == "background"
    assert app.amqp.router.route({}, "review.render_ahead")["queue"].name == "default"
    assert "review.render_ahead" in {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None  # it exited meanwhile


def test_it_runs_a_background_only_worker_at_low_priority_and_others_at_their_own(start_worker):
    own = os.getpriority(os.PRIO_PROCESS, 0)
    background = start_worker("background", queues="background", concurrency=2)
    mixed = start_worker("mixed", queues="default,background")
    children = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if parent(pid) == background.proc.pid]
    assert len(children) == 2  # the prefork pool forked after the worker lowered its priority
    for pid in (background.proc.pid, *children):
        assert os.getpriority(os.PRIO_PROCESS, pid) == max(own, settings.BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, mixed.proc.pid) == own  # it also serves default: never slowed
    if Path("/proc/self/autogroup").exists():
        # With autogroups niceness only ranks a session's own processes: the worker leads its session (as under
        # honcho), so its session's group is lowered too.
        assert Path(f"/proc/{background.proc.pid}/autogroup").read_text().split()[-1] == str(settings.BACKGROUND_NICE)
        assert Path(f"/proc/{mixed.proc.pid}/autogroup").read_text().split()[-1] == "0"


def test_a_replay_is_rendered_from_the_recorded_state_into_a_playable_video(client, start_worker, anna):
    import imageio_ffmpeg

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    episode = ingest(task, recorded(seed=7, steps=60), seed=7)
    start_worker(queues="background", **SMALL)
    client.force_login(anna)
    status = client.get(reverse("review-replay-status", args=[episode.pk])).json()  # on demand
    assert status["status"] in ("queued", "rendering", "ready")
    video = finished(episode.pk)
    assert video.status == ReplayVideo.Status.READY, video.error
    # Every second control step (REVIEW_VIDEO_STRIDE) at 40 fps: still the robot's 80 Hz pace.
    assert (video.frames, video.fps, video.stride, video.width, video.height) == (30, 40.0, 2, 160, 128)

    reader = imageio_ffmpeg.read_frames(str(video.file))
    meta = reader.__next__()
    assert meta["codec"] == "h264" and meta["size"] == (160, 128) and meta["fps"] == 40
    assert meta["duration"] == pytest.approx(60 * 0.0125, abs=0.03)
    frames = [np.frombuffer(frame, np.uint8).reshape(128, 160, 3) for frame in reader]
    assert len(frames) == 30
    assert frames[0].std() > 10  # a scene, not a blank frame
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1  # the robot moved
    with open(video.file, "rb") as fh:
        data = fh.read()
    # faststart: the index (moov) precedes the media (mdat), so the video seeks while it loads
    assert 0 < data.find(b"moov") < data.find(b"mdat")

    status = client.get(reverse("review-replay-status", args=[episode.pk])).json()
    assert (status["status"], status["fps"], status["stride"], status["frames"]) == ("ready", 40, 2, 30)
    assert client.get(status["url"], HTTP_RANGE="bytes=0-99").status_code == 206
    first_render = video.finished_at
    client.get(reverse("review-replay-status", args=[episode.pk]))
    assert ReplayVideo.objects.get(pk=episode.pk).finished_at == first_render  # cached, not rendered again


def test_episodes_that_cannot_replay_fail_with_a_clear_error_and_can_be_retried(client, start_worker, anna):
    pick_place = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    shelf = Task.objects.create(env_name="shelf-place-v3", title="Shelf place")
    unknown = Task.objects.create(env_name="juggle-v3", title="Juggle")
    other_task = ingest(shelf, recorded(seed=7, steps=60), seed=7)  # recorded on pick-place, filed as shelf-place
    tampered = recorded(seed=7, steps=60)
    tampered["qpos"][30, 9] += 0.2  # the object jumps: the state no longer gives the recorded observation
    corrupt = ingest(pick_place, tampered, seed=7)
    not_metaworld = ingest(unknown, recorded(seed=7, steps=60), seed=7)
    start_worker(queues="background", **SMALL)
    for episode in (other_task, corrupt, not_metaworld):
        ReplayVideo.request(episode.pk)

    expected = {other_task.pk: "differs by", corrupt.pk: "step 30: the recorded simulator state does not "
                "reproduce the observation", not_metaworld.pk: "'juggle-v3' is not a Meta-World v3 task"}
    for episode_id, words in expected.items():
        video = finished(episode_id)
        assert video.status == ReplayVideo.Status.FAILED
        assert video.error.startswith(f"Cannot replay episode {episode_id}") and words in video.error, video.error
        assert video.path == ""
        assert AuditEvent.objects.filter(verb="replay.failed", object_id=str(episode_id)).exists()
    assert "recorded on another task" in ReplayVideo.objects.get(pk=other_task.pk).error
    assert "corrupt" in ReplayVideo.objects.get(pk=corrupt.pk).error
    assert not list((settings.STORAGE_DIR / "replays").glob("*.tmp.mp4"))  # no half-written files left

    client.force_login(anna)
    status = client.get(reverse("review-replay-status", args=[corrupt.pk])).json()
    assert status["status"] == "failed" and "corrupt" in status["error"]  # a failure waits for a person
    response = client.post(reverse("review-replay-retry", args=[corrupt.pk]))
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert client.post(reverse("review-replay-retry", args=[corrupt.pk])).status_code == 409  # already queued
    video = finished(corrupt.pk)
    assert video.status == ReplayVideo.Status.FAILED and video.attempts == 2
    assert AuditEvent.objects.filter(verb="replay.retry", actor=anna, object_id=str(corrupt.pk)).exists()


def test_replays_are_rendered_ahead_for_the_queue_and_a_dead_render_is_queued_again(start_worker, anna):
    from review.tasks import render_ahead

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    now = timezone.now()
    episodes = [ingest(task, recorded(seed=7, steps=30), seed=7, finished_at=now - timedelta(minutes=i))
                for i in range(5)]
    ReviewClaim.claim(episodes[0], anna)  # anna is on the newest: the next ones are rendered ahead
    assert render_ahead() == settings.REVIEW_RENDER_AHEAD == 3
    assert sorted(ReplayVideo.objects.values_list("pk", flat=True)) == sorted(e.pk for e in episodes[1:4])

    # A render whose worker died (no heartbeat for a while) is queued again when someone asks for it.
    silent_since = now - timedelta(seconds=settings.REVIEW_RENDER_STALE_SECONDS + 1)
    ReplayVideo.objects.filter(pk=episodes[3].pk).update(status=ReplayVideo.Status.RENDERING, heartbeat_at=silent_since)
    assert ReplayVideo.request(episodes[3].pk).status == ReplayVideo.Status.QUEUED
    start_worker(queues="background", **SMALL)
    for episode in episodes[1:4]:
        assert finished(episode.pk).status == ReplayVideo.Status.READY


def test_a_replay_a_person_waits_for_renders_before_those_queued_ahead(start_worker, anna):
    """The background worker is busy with a render-ahead job when three more are queued ahead and then a person
    opens an episode nobody rendered: the person's render comes next, not after the three."""
    from review import jobs

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    busy = ingest(task, recorded(seed=7, steps=300), seed=7)
    ahead = [ingest(task, recorded(seed=7, steps=30), seed=7) for _ in range(3)]
    wanted = ingest(task, recorded(seed=7, steps=30), seed=7)
    start_worker(queues="background", **SMALL)
    jobs.render_ahead([busy.pk])
    wait_for(lambda: ReplayVideo.objects.get(pk=busy.pk).status == ReplayVideo.Status.RENDERING, 60,
             "the worker to start the first render", interval=0.05)
    assert jobs.render_ahead([episode.pk for episode in ahead]) == 3
    jobs.request_replay(anna, wanted.pk)
    assert ReplayVideo.objects.get(pk=busy.pk).status == ReplayVideo.Status.RENDERING  # still busy: nothing reserved

    videos = {episode.pk: finished(episode.pk) for episode in [busy, wanted, *ahead]}
    assert all(video.status == ReplayVideo.Status.READY for video in videos.values())
    order = sorted(videos, key=lambda pk: videos[pk].finished_at)
    assert order[:2] == [busy.pk, wanted.pk]
    assert videos[wanted.pk].urgent and not videos[ahead[0].pk].urgent
