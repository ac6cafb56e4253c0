"""One open flag per episode and person: a second one says so and adds nothing, in the view, the model and the
database."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from review.models import AlreadyFlagged, EpisodeFlag

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def episode(tasks):
    """An ingested episode (its page draws its payload)."""
    import uuid

    from fleet.ingest import ingest_episode
    from tests.factories import make_arrays

    now = timezone.now()
    return ingest_episode(uuid=uuid.uuid4(), task=tasks[0].env_name, seed=1, outcome="timeout",
                          arrays=make_arrays(), started_at=now - timedelta(seconds=5), finished_at=now)[0]


def test_flagging_an_episode_twice_says_so_and_adds_nothing(client, olivia, episode):
    client.force_login(olivia)
    url = reverse("episode-flag", args=[episode.pk])
    client.post(url, {"reason": "it stalled at the shelf"})
    response = client.post(url, {"reason": "it stalled at the shelf"}, follow=True)
    page = response.content.decode()
    assert f"You flagged episode {episode.pk} already" in page and "nothing was added" in page
    assert EpisodeFlag.objects.count() == 1 and AuditEvent.objects.filter(verb="episode.flag").count() == 1
    assert 'id="my-flag"' in page and "Flag episode</button>" not in page  # the page shows theirs instead


def test_another_person_may_flag_it_and_a_resolved_flag_may_be_raised_again(olivia, sam, anna, episode):
    first = EpisodeFlag.raise_flag(episode, olivia, "gripper slipped")
    EpisodeFlag.raise_flag(episode, sam, "the approach looks wrong")  # someone else's eyes
    with pytest.raises(AlreadyFlagged) as again:
        EpisodeFlag.raise_flag(episode, olivia, "said twice")
    assert again.value.flag == first
    first.resolve(anna, EpisodeFlag.Status.DISMISSED, reason="not a failure")
    EpisodeFlag.raise_flag(episode, olivia, "it happened again in the replay")  # hers was resolved
    assert EpisodeFlag.objects.filter(episode=episode, raised_by=olivia).count() == 2


def test_the_database_refuses_a_second_open_flag_whoever_writes_it(olivia, episode):
    EpisodeFlag.objects.create(episode=episode, raised_by=olivia, reason="first")
    with pytest.raises(IntegrityError), transaction.atomic():
        EpisodeFlag.objects.create(episode=episode, raised_by=olivia, reason="second, past the model")


@pytest.mark.django_db(transaction=True)
def test_the_migration_dismisses_older_duplicates_with_an_audit_row():
    from tests.test_migrations import latest, migrate

    old = migrate([("review", "0004_dataset_exports")])
    try:
        User, Task = old.get_model("auth", "User"), old.get_model("fleet", "Task")
        Flag, Episode = old.get_model("review", "EpisodeFlag"), old.get_model("fleet", "Episode")
        olivia = User.objects.create(username="olivia-dup")
        now = timezone.now()
        task = Task.objects.create(env_name="pick-place-v3", title="pick place")
        episode = Episode.objects.create(task=task, seed=1, outcome="failure", steps=10, total_return=0,
                                         started_at=now, finished_at=now)
        flags = [Flag.objects.create(episode=episode, raised_by=olivia, reason=f"click {i}",
                                     created_at=now + timedelta(seconds=i)) for i in range(3)]
        migrate(latest())
        statuses = dict(EpisodeFlag.objects.values_list("pk", "status"))
        assert [statuses[f.pk] for f in flags] == ["open", "dismissed", "dismissed"]
        rows = AuditEvent.objects.filter(verb="flag.dismissed").order_by("object_id")
        assert [r.object_id for r in rows] == [str(flags[1].pk), str(flags[2].pk)]
        assert all(r.reason.startswith(f"duplicate of flag {flags[0].pk}") for r in rows)
    finally:
        migrate(latest())
