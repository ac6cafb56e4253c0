"""The learner's episode cursor folds every episode exactly once, including one that commits after a higher id."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from fleet.models import Episode, Task
from learner.loop import EpisodeCursor


def make(task, pk=None, source=Episode.Source.ONLINE):
    now = timezone.now()
    return Episode.objects.create(pk=pk, task=task, seed=1, outcome="timeout", steps=1, total_return=0.0,
                                  source=source, started_at=now - timedelta(seconds=1), finished_at=now)


def test_a_late_commit_below_the_high_water_mark_is_still_folded(db):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    cursor = EpisodeCursor()
    first, third = make(task, pk=1001), make(task, pk=1003)
    make(task, pk=1004, source=Episode.Source.EVALUATION)  # never training data
    for episode in cursor.new_episodes(100):
        cursor.mark(episode.pk)
    assert cursor.high == 1003
    late = make(task, pk=1002)  # its id was taken before 1003's, its commit came after
    assert [e.pk for e in cursor.new_episodes(100)] == [late.pk]
    cursor.mark(late.pk)
    assert cursor.new_episodes(100) == []
    assert {first.pk, third.pk, late.pk} <= cursor.recent
