"""Background work people ask for: per-user rate limits on replay renders and exports (429 with Retry-After), the
system-wide cap on queued renders (503), dataset exports as Celery jobs with a progress page and a download only
their owner and supervisors get, one running export per person, retention; the audit CSV's rate."""
from __future__ import annotations

import csv
import io
import zipfile
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone

from core import bus
from core.models import AuditEvent
from fleet.models import Task
from review import jobs
from review.models import (
    RENDER_ABANDONED_AFTER,
    RENDER_AHEAD_PRIORITY,
    RENDER_NOW_PRIORITY,
    DatasetExport,
    EpisodeLabel,
    RenderQueueFull,
    ReplayVideo,
    ReviewClaim,
)
from tests.conftest import at_the_same_instant, make_user, wait_for
from tests.reviewing import ingest, synthetic

# Wide enough that no test crosses a window's edge (a fixed window starts counting afresh there).
WINDOW = 10 ** 9


@pytest.fixture(autouse=True)
def fresh_limits(settings):
    for key in bus.client().scan_iter("sopweb:rate:*"):
        bus.client().delete(key)
    settings.REVIEW_RENDER_RATE_WINDOW = settings.EXPORT_RATE_WINDOW = WINDOW


@pytest.fixture
def task(db):
    return Task.objects.create(env_name="pick-place-v3", title="Pick place")


@pytest.fixture
def bea(db):
    """A second annotator."""
    return make_user("bea", "annotators")


def replay_status(client, episode):
    return client.get(reverse("review-replay-status", args=[episode.pk]))


def ready(episode) -> ReplayVideo:
    path = Path(django_settings.STORAGE_DIR) / "replays" / f"test-{episode.pk}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")
    return ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.READY, fps=80, frames=40,
                                      path=str(path.relative_to(django_settings.STORAGE_DIR)),
                                      finished_at=timezone.now())


def labelled(task, annotator, count: int, disposition: str = "keep") -> list:
    episodes = []
    for i in range(count):
        episode = ingest(task, synthetic(steps=20 + i, seed=i))
        ReviewClaim.claim(episode, annotator)
        ReviewClaim.submit_label(episode, annotator, failure_mode="stalled", failure_step=None, notes=f"#{i}",
                                 disposition=disposition)
        episodes.append(episode)
    return episodes


# --- replay renders --------------------------------------------------------------------------------------

def test_a_viewer_past_the_render_rate_gets_429_with_retry_after_and_nothing_is_queued(
        client, task, anna, sam, settings, django_capture_on_commit_callbacks):
    settings.REVIEW_RENDER_RATE_LIMIT = 3
    episodes = [ingest(task, synthetic(seed=i)) for i in range(5)]
    client.force_login(anna)  # any viewer of episodes may ask for replays; reviewers may also retry one
    for episode in episodes[:3]:
        assert replay_status(client, episode).json()["status"] == "queued"

    with django_capture_on_commit_callbacks() as sent:
        refused = replay_status(client, episodes[3])
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= WINDOW
    assert refused.json()["error"].startswith("you asked for more than 3 replay renders in ")
    assert refused.json()["retry_after"] == int(refused["Retry-After"])
    assert not ReplayVideo.objects.filter(pk=episodes[3].pk).exists() and sent == []
    assert client.post(reverse("review-replay-retry", args=[episodes[3].pk])).status_code == 404  # nothing there

    # Asking about replays already on their way costs nothing; the limit is the person's, not everyone's.
    assert replay_status(client, episodes[0]).json()["status"] == "queued"
    client.force_login(sam)
    assert replay_status(client, episodes[3]).json()["status"] == "queued"
    assert ReplayVideo.objects.count() == 4


def test_a_failed_render_retried_past_the_rate_is_refused_and_stays_failed(client, task, anna, settings):
    settings.REVIEW_RENDER_RATE_LIMIT = 1
    first, failed = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    ReplayVideo.objects.create(episode=failed, status=ReplayVideo.Status.FAILED, error="boom")
    client.force_login(anna)
    assert replay_status(client, first).status_code == 200
    refused = client.post(reverse("review-replay-retry", args=[failed.pk]))
    assert refused.status_code == 429 and "Retry-After" in refused
    assert ReplayVideo.objects.get(pk=failed.pk).status == ReplayVideo.Status.FAILED
    assert not AuditEvent.objects.filter(verb="replay.retry").exists()


def test_the_review_page_opens_past_the_render_rate_and_says_why_there_is_no_replay(client, task, anna, settings):
    settings.REVIEW_RENDER_RATE_LIMIT = 1
    first, second = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    client.force_login(anna)
    assert client.get(reverse("review-episode", args=[first.pk])).status_code == 200
    page = client.get(reverse("review-episode", args=[second.pk]))
    assert page.status_code == 200  # labelling goes on from the charts
    assert "You asked for more than 1 replay renders" in page.content.decode()
    assert not ReplayVideo.objects.filter(pk=second.pk).exists()


def test_the_render_cap_refuses_new_renders_and_still_answers_queued_and_rendered_ones(
        client, task, anna, olivia, settings):
    settings.REVIEW_RENDER_QUEUE_MAX = 2
    settings.REVIEW_RENDER_RATE_LIMIT = 3
    rendered, first, second, third, failed = (ingest(task, synthetic(seed=i)) for i in range(5))
    ready(rendered)
    ReplayVideo.objects.create(episode=failed, status=ReplayVideo.Status.FAILED, error="boom")
    client.force_login(anna)
    assert replay_status(client, first).json()["status"] == "queued"
    assert replay_status(client, second).json()["status"] == "queued"

    full = replay_status(client, third)
    assert full.status_code == 503 and int(full["Retry-After"]) == RenderQueueFull.retry_after
    assert full.json()["error"] == ("2 replays are already queued or rendering (at most 2 at once), so no new "
                                    "render was queued; try again in a minute")
    assert not ReplayVideo.objects.filter(pk=third.pk).exists()
    assert client.post(reverse("review-replay-retry", args=[failed.pk])).status_code == 503
    assert ReplayVideo.objects.get(pk=failed.pk).status == ReplayVideo.Status.FAILED
    # Already on its way, or rendered: answered as always.
    assert replay_status(client, first).json()["status"] == "queued"
    assert replay_status(client, rendered).json()["status"] == "ready"
    # Render-ahead takes at most half of the queue, so it queues nothing now.
    assert jobs.render_ahead([third.pk]) == 0

    ReplayVideo.objects.filter(pk=first.pk).update(status=ReplayVideo.Status.READY, finished_at=timezone.now())
    # The refusal cost the person nothing: this is their third render.
    assert replay_status(client, third).json()["status"] == "queued"


def test_an_abandoned_render_does_not_hold_a_place_in_the_cap(task, anna, settings):
    settings.REVIEW_RENDER_QUEUE_MAX = 1
    lost, wanted = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    ReplayVideo.objects.create(episode=lost, heartbeat_at=timezone.now() - RENDER_ABANDONED_AFTER
                               - timedelta(minutes=1))
    assert jobs.request_replay(anna, wanted.pk).status == ReplayVideo.Status.QUEUED
    with pytest.raises(RenderQueueFull):  # queueing the lost one again is a new render: the cap is full now
        jobs.request_replay(anna, lost.pk)


class SentRenders:
    """Stands in for review.tasks.render_replay: records (episode, priority) of each message sent."""

    def __init__(self):
        self.sent = []

    def apply_async(self, args, priority):
        self.sent.append((args[0], priority))


def test_a_persons_render_goes_before_render_ahead_and_moves_one_queued_ahead_forward_once(
        task, anna, settings, monkeypatch, django_capture_on_commit_callbacks):
    from review import tasks

    settings.REVIEW_RENDER_RATE_LIMIT = 1  # anna's one render is `wanted`: moving another forward is not one
    renders = SentRenders()
    monkeypatch.setattr(tasks, "render_replay", renders)
    ahead, opened, wanted = (ingest(task, synthetic(seed=i)) for i in range(3))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.render_ahead([ahead.pk, opened.pk]) == 2
        jobs.request_replay(anna, wanted.pk)
    assert renders.sent == [(ahead.pk, RENDER_AHEAD_PRIORITY), (opened.pk, RENDER_AHEAD_PRIORITY),
                            (wanted.pk, RENDER_NOW_PRIORITY)]
    assert RENDER_NOW_PRIORITY < RENDER_AHEAD_PRIORITY  # Redis pops the lower number first

    # anna opens an episode rendered ahead before the worker got to it: one more message, on the first lane
    # (whichever the worker takes first renders it); her page polling it, or render-ahead asking again, sends none.
    renders.sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            assert jobs.request_replay(anna, opened.pk).urgent
        jobs.render_ahead([opened.pk, wanted.pk])
    assert renders.sent == [(opened.pk, RENDER_NOW_PRIORITY)]
    assert set(ReplayVideo.objects.filter(urgent=True).values_list("pk", flat=True)) == {opened.pk, wanted.pk}
    assert ReplayVideo.in_flight().count() == 3  # the same three renders


def test_a_replay_rendered_before_strides_existed_maps_one_frame_to_each_step(client, task, anna):
    episode = ingest(task, synthetic(seed=1))
    ready(episode)  # a row as the worker wrote them before: fps 80, no stride
    client.force_login(anna)
    state = replay_status(client, episode).json()
    assert (state["status"], state["fps"], state["stride"], state["frames"]) == ("ready", 80, 1, 40)


def test_racing_requests_never_take_more_places_than_the_cap(transactional_db, task, settings):
    settings.REVIEW_RENDER_QUEUE_MAX = 3
    episodes = [ingest(task, synthetic(seed=i)) for i in range(8)]
    users = [make_user(f"viewer{i}", "operators") for i in range(8)]
    results = at_the_same_instant(*(partial(jobs.request_replay, user, episode.pk)
                                    for user, episode in zip(users, episodes)))
    outcomes = ["full" if isinstance(result, RenderQueueFull) else
                "queued" if not isinstance(result, Exception) else result for result in results]
    assert sorted(outcomes) == ["full"] * 5 + ["queued"] * 3
    assert ReplayVideo.in_flight().count() == 3


# --- dataset exports -------------------------------------------------------------------------------------

def test_an_export_job_builds_a_zip_that_its_owner_and_supervisors_download_and_no_other_annotator_can(
        client, start_worker, task, anna, bea, sam, olivia):
    labelled(task, anna, 3)
    client.force_login(anna)
    response = client.post(reverse("review-export"), {"disposition": ["keep", "relabel"]})
    assert response.status_code == 302
    export = DatasetExport.objects.get()
    start_worker(queues="background")

    def done():
        export.refresh_from_db()
        return export.status in (DatasetExport.Status.READY, DatasetExport.Status.FAILED)
    wait_for(done, 90, "the export job", interval=0.2)
    assert export.status == DatasetExport.Status.READY, export.error
    assert (export.episodes, export.progress, export.path) == (3, 1.0, f"exports/export-{export.pk}.zip")
    assert export.file.stat().st_size == export.size and export.started_at <= export.finished_at
    assert not list(export.file.parent.glob("*.partial"))  # the job cleaned up its working folder

    urls = {name: reverse(f"review-export-{name}", args=[export.pk]) for name in ("job", "status", "download")}
    state = client.get(urls["status"]).json()
    assert state["status"] == "ready" and state["download_url"] == urls["download"] and state["episodes"] == 3
    assert urls["download"] in client.get(urls["job"]).content.decode()
    download = client.get(urls["download"])
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert download["Content-Disposition"] == f'attachment; filename="sopweb-labelled-episodes-{export.pk}.zip"'
    names = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).namelist()
    assert "sopweb-labelled-episodes/meta/info.json" in names
    assert "sopweb-labelled-episodes/data/chunk-000/file-000.parquet" in names  # v3.0, the form's default
    assert "sopweb-labelled-episodes/meta/episodes/chunk-000/file-000.parquet" in names

    client.force_login(bea)  # another annotator: not even told it exists
    for url in urls.values():
        assert client.get(url).status_code == 404
    assert urls["job"] not in client.get(reverse("review-export")).content.decode()
    client.force_login(olivia)  # operators do not export at all
    assert client.get(urls["download"]).status_code == 403
    client.force_login(sam)  # a supervisor may
    assert client.get(urls["download"]).status_code == 200
    assert urls["job"] in client.get(reverse("review-export")).content.decode()


def test_a_person_runs_one_export_at_a_time_within_a_rate(client, task, anna, bea, settings):
    labelled(task, anna, 1)
    client.force_login(anna)
    assert client.post(reverse("review-export"), {"disposition": ["keep"]}).status_code == 302
    running = DatasetExport.objects.get()
    refused = client.post(reverse("review-export"), {"disposition": ["keep"]})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    page = refused.content.decode()
    assert "You already have 1 export queued or running (at most 1 at once)" in page
    assert reverse("review-export-job", args=[running.pk]) in page and "Nothing was queued" in page
    assert DatasetExport.objects.count() == 1
    client.force_login(bea)  # the limit is per person
    assert client.post(reverse("review-export"), {"disposition": ["keep"]}).status_code == 302

    settings.REVIEW_EXPORTS_PER_USER = 10
    settings.EXPORT_RATE_LIMIT = 2
    client.force_login(anna)
    assert client.post(reverse("review-export"), {"disposition": ["keep"]}).status_code == 302
    refused = client.post(reverse("review-export"), {"disposition": ["keep"]})
    assert refused.status_code == 429 and "You asked for more than 2 exports in" in refused.content.decode()
    assert DatasetExport.objects.filter(requested_by=anna).count() == 2


def test_an_export_whose_worker_died_fails_and_frees_its_place(client, task, anna):
    labelled(task, anna, 1)
    export = DatasetExport.objects.create(requested_by=anna, dispositions=["keep"], episodes=1,
                                          status=DatasetExport.Status.RUNNING,
                                          heartbeat_at=timezone.now() - timedelta(minutes=6))
    client.force_login(anna)
    state = client.get(reverse("review-export-status", args=[export.pk])).json()
    assert state["status"] == "failed" and "its worker made no progress for 5 minutes" in state["error"]
    assert client.post(reverse("review-export"), {"disposition": ["keep"]}).status_code == 302


def test_an_export_with_nothing_left_to_export_fails_with_a_clear_error(task, anna):
    from review.tasks import export_dataset

    labelled(task, anna, 1)
    export = DatasetExport.objects.create(requested_by=anna, dispositions=["keep"], episodes=1)
    EpisodeLabel.objects.update(disposition=EpisodeLabel.Disposition.EXCLUDE)  # relabelled since the request
    assert export_dataset.apply(args=[export.pk]).get() == "failed"
    export.refresh_from_db()
    assert export.status == DatasetExport.Status.FAILED and "nothing to export" in export.error
    assert export_dataset.apply(args=[export.pk]).get() == "nothing to export"  # a duplicate message does nothing


def test_old_export_zips_are_deleted_and_their_rows_kept(client, task, anna, settings):
    from review.tasks import evict_old_files

    settings.REVIEW_EXPORT_KEEP_DAYS = 7
    folder = Path(settings.STORAGE_DIR) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    exports = {}
    for name, age_days in (("old", 8), ("fresh", 1)):
        export = DatasetExport.objects.create(requested_by=anna, dispositions=["keep"],
                                              status=DatasetExport.Status.READY,
                                              finished_at=timezone.now() - timedelta(days=age_days))
        export.path = f"exports/export-{export.pk}.zip"
        export.save()
        export.file.write_bytes(b"zip")
        exports[name] = export
    dead = DatasetExport.objects.create(requested_by=anna, dispositions=["keep"], status=DatasetExport.Status.FAILED)
    (folder / f"export-{dead.pk}.partial" / "meta").mkdir(parents=True)  # left by a killed worker

    assert evict_old_files()["exports"] == 1
    old, fresh = (DatasetExport.objects.get(pk=exports[name].pk) for name in ("old", "fresh"))
    assert old.status == DatasetExport.Status.EXPIRED and old.path == "" and not exports["old"].file.exists()
    assert fresh.status == DatasetExport.Status.READY and fresh.file.exists()
    assert not (folder / f"export-{dead.pk}.partial").exists()
    client.force_login(anna)
    assert client.get(reverse("review-export-download", args=[old.pk])).status_code == 404
    assert "export again" in client.get(reverse("review-export-job", args=[old.pk])).content.decode()


def test_the_export_admin_is_read_only_even_for_superusers(client, task, sam):
    sam.is_staff = sam.is_superuser = True
    sam.save()
    export = DatasetExport.objects.create(requested_by=sam, dispositions=["keep"])
    client.force_login(sam)
    assert client.get(reverse("admin:review_datasetexport_change", args=[export.pk])).status_code == 200
    assert client.post(reverse("admin:review_datasetexport_change", args=[export.pk]),
                       {"status": "ready"}).status_code == 403
    export.refresh_from_db()
    assert export.status == DatasetExport.Status.QUEUED


# --- the audit CSV ---------------------------------------------------------------------------------------

def test_the_audit_csv_is_streamed_within_the_persons_export_rate(client, sam, settings):
    settings.EXPORT_RATE_LIMIT = 1
    AuditEvent.record(sam, "test.event", sam, reason="something")
    client.force_login(sam)
    export = client.get("/audit/", {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [row["verb"] for row in rows] == ["test.event"]
    refused = client.get("/audit/", {"format": "csv"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "You asked for more than 1 exports in" in refused.content.decode()
    assert client.get("/audit/").status_code == 200  # the page itself is not an export
