"""Group commit (fleet.group_commit): episodes stored at once by several threads share one transaction; each caller
is answered once its episode is committed; a repeated UUID and a bad episode in a group affect only themselves."""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import DataError, connection, connections, transaction
from django.utils import timezone

from fleet import group_commit
from fleet.ingest import ingest_episode
from fleet.models import Episode, Task
from tests.reviewing import synthetic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fresh_writer(settings):
    """A writer built from this test's settings, and none left behind for the next test."""
    from fleet import ingest

    def make(window_ms: float = 2.0, most: int = 64):
        settings.INGEST_GROUP_COMMIT, settings.INGEST_GROUP_WINDOW_MS, settings.INGEST_GROUP_MAX = True, window_ms, most
        group_commit._writer = None
        ingest._tasks.clear()  # a task cached by an earlier test (rolled back since) would cost each a second INSERT
        return lambda: group_commit._writer
    yield make
    group_commit._writer = None


def store(task, key=None, **overrides):
    now = timezone.now()
    return ingest_episode(uuid=key or uuid.uuid4(), task=task.env_name, seed=7, outcome="timeout",
                          arrays=overrides.pop("arrays", None) or synthetic(steps=40), started_at=now - timedelta(seconds=1),
                          finished_at=now, **overrides)


def at_once(count: int, work) -> list:
    """`work(i)` in `count` threads released together; each result or exception, by i. Each thread checks that
    what it was answered is visible on its own connection (not the writer's) before it ends."""
    barrier, results = threading.Barrier(count), [None] * count

    def run(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 — reported to the test
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_episodes_stored_at_once_share_commits_and_are_durable_when_answered(fresh_writer):
    writer = fresh_writer(window_ms=20)
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")

    def work(i):
        episode, created = store(task)
        # Answered: committed, so this thread's own connection sees it and its payload.
        assert Episode.objects.filter(pk=episode.pk, payload__isnull=False).exists()
        return episode.pk, created

    results = at_once(24, work)
    assert all(isinstance(r, tuple) and r[1] for r in results), results
    assert Episode.objects.count() == 24 and len({pk for pk, _ in results}) == 24
    stats = writer().stats
    assert stats.episodes == 24 and stats.groups < 24 and stats.largest > 1, stats  # they were grouped
    assert stats.split == 0


def test_one_bad_episode_in_a_group_fails_alone(fresh_writer):
    writer = fresh_writer(window_ms=200)  # wide enough that all eight go in one group
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")

    def work(i):
        # PostgreSQL's jsonb refuses \u0000: an error of the database itself, which aborts the group's transaction.
        return store(task, meta={"note": "\x00" if i == 3 else "fine"})

    results = at_once(8, work)
    assert isinstance(results[3], DataError), results[3]
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, tuple) and r[1] for r in good), good
    assert Episode.objects.count() == 7
    assert writer().stats.split == 1  # the group failed together, then each was stored alone


def test_the_same_uuid_twice_in_a_group_is_stored_once(fresh_writer):
    writer = fresh_writer(window_ms=200)
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    key, arrays = uuid.uuid4(), synthetic(steps=40)
    results = at_once(4, lambda i: store(task, key, arrays=arrays))
    assert sorted(created for _, created in results) == [False, False, False, True], results
    assert len({episode.pk for episode, _ in results}) == 1 and Episode.objects.count() == 1
    assert writer().stats.largest == 4


def test_a_refused_episode_in_a_group_is_refused_alone(fresh_writer):
    fresh_writer(window_ms=200)
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    from fleet.ingest import EpisodeRejected

    results = at_once(4, lambda i: store(task, robot_id=10**9 if i == 0 else None))
    assert isinstance(results[0], EpisodeRejected) and "unknown robot" in str(results[0])
    assert all(isinstance(r, tuple) and r[1] for r in results[1:]) and Episode.objects.count() == 3


def test_a_lone_caller_stores_on_its_own_connection_and_is_never_held(fresh_writer):
    import time

    writer = fresh_writer(window_ms=1000)  # a window no lone caller could miss
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    store(task)  # connects, prepares, caches the task
    started = time.monotonic()
    for _ in range(5):
        store(task)
    assert time.monotonic() - started < 2.5  # five episodes, not five windows of a second
    assert writer() is None and Episode.objects.count() == 6  # no hand-off, no writer: nobody to group with


def test_inside_a_transaction_an_episode_is_stored_by_its_caller(fresh_writer):
    writer = fresh_writer()
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    with transaction.atomic():
        store(task)
        # The caller's transaction holds it: rolled back with it, never committed by the writer.
        transaction.set_rollback(True)
    assert writer() is None and not Episode.objects.exists()


def test_a_lost_writer_connection_fails_its_group_and_the_next_group_connects_again(fresh_writer):
    from django.db import OperationalError

    writer = fresh_writer(window_ms=200)
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    assert all(isinstance(r, tuple) for r in at_once(4, lambda i: store(task)))
    groups = writer().stats.groups
    with connection.cursor() as cursor:  # end every other session of this database: the writer's among them
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    # The group on the dead connection fails with the database's error, as a lone INSERT there would ...
    first = at_once(4, lambda i: store(task))
    assert all(isinstance(r, (tuple, OperationalError)) for r in first), first
    # ... and the next group connects again.
    again = at_once(4, lambda i: store(task))
    assert all(isinstance(r, tuple) and r[1] for r in again), again
    assert writer().stats.groups > groups
    assert Episode.objects.count() == 8 + sum(isinstance(r, tuple) for r in first)


def test_a_failure_outside_the_database_neither_kills_the_writer_nor_strands_a_caller(fresh_writer, monkeypatch):
    from core import metrics

    writer = fresh_writer(window_ms=200)
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")

    def broken(value):
        raise OSError("the metrics folder is gone")

    monkeypatch.setattr(metrics.INGEST_GROUP_SIZE, "observe", broken)
    assert all(isinstance(r, tuple) and r[1] for r in at_once(4, lambda i: store(task)))  # stored all the same
    boom = RuntimeError("something unforeseen")
    monkeypatch.setattr(writer(), "_execute", lambda group: (_ for _ in ()).throw(boom))
    failed = at_once(3, lambda i: store(task))
    # Each caller the writer took is told (one that found itself alone stored its own); none is left waiting.
    assert any(r is boom for r in failed) and all(r is boom or r[1] for r in failed), failed
    monkeypatch.undo()
    assert writer()._thread.is_alive()
    assert all(isinstance(r, tuple) and r[1] for r in at_once(3, lambda i: store(task)))
    assert Episode.objects.count() == 7 + sum(r is not boom for r in failed)
