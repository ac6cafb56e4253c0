"""Ingestion: validated before anything is written, idempotent by UUID, with events on commit."""
from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from fleet.ingest import EpisodeRejected, ingest_episode, load_arrays
from fleet.models import Episode, EpisodePayload, InterventionSegment, Robot, Task
from fleet.sim import episode_data
from tests.conftest import at_the_same_instant
from tests.factories import make_arrays

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def task(db):
    return Task.objects.create(env_name="pick-place-v3", title="Pick place")


@pytest.fixture
def robot(db):
    return Robot.objects.create(name="sim-01")


def ingest(task_row, robot=None, **overrides):
    now = timezone.now()
    fields = dict(uuid=uuid.uuid4(), task=task_row.env_name, seed=7, outcome="timeout", arrays=make_arrays(),
                  started_at=now - timedelta(seconds=1), finished_at=now, robot_id=robot.pk if robot else None)
    fields.update(overrides)
    return ingest_episode(**fields)


def test_it_writes_row_payload_and_segments_together(task, robot):
    arrays = make_arrays()
    episode, created = ingest(task, robot, arrays=arrays, meta={"gate": {"no_progress_steps": 15}})
    assert created
    episode.refresh_from_db()
    assert (episode.steps, episode.intervention_steps, episode.outcome) == (50, 20, "timeout")
    assert episode.meta["gate"] == {"no_progress_steps": 15}
    assert list(InterventionSegment.objects.filter(episode=episode).values_list("start_step", "end_step", "source")) \
        == [(10, 20, "gate"), (40, 50, "operator")]
    back = load_arrays(episode)
    assert all(np.array_equal(back[name], arrays[name]) for name in arrays)


def test_listing_episodes_never_loads_payloads(task, robot, django_assert_num_queries):
    ingest(task, robot)
    with django_assert_num_queries(1) as captured:
        list(Episode.objects.all())
    assert "payload" not in captured.captured_queries[0]["sql"].lower()


def test_the_same_uuid_twice_makes_one_row(task, robot):
    key = uuid.uuid4()
    first, created = ingest(task, robot, uuid=key)
    again, created_again = ingest(task, robot, uuid=key)
    assert created and not created_again and first.pk == again.pk
    assert Episode.objects.count() == EpisodePayload.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_redelivery_makes_one_row():
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    key = uuid.uuid4()
    results = at_the_same_instant(*[lambda: ingest(task, uuid=key)[1]] * 2)
    assert sorted(results) == [False, True]
    assert Episode.objects.count() == 1


def corrupt(name, value):
    arrays = make_arrays()
    arrays[name] = value(arrays[name]) if callable(value) else value
    return arrays


@pytest.mark.parametrize("arrays, message", [
    (corrupt("obs", lambda a: np.where(np.arange(39) == 3, np.nan, a).astype(np.float32)), "NaN or infinite"),
    (corrupt("reward", lambda a: np.full_like(a, np.inf)), "NaN or infinite"),
    (corrupt("obs", lambda a: a[:, :30].copy()), "shape"),
    (corrupt("action", lambda a: a[:40].copy()), "40 steps but obs has 50"),
    (corrupt("action", lambda a: a.astype(np.float64)), "must be float32"),
    (corrupt("intervention", lambda a: a.astype(np.int64)), "must be bool"),
    (corrupt("obs", [[0.0] * 39]), "must be a numpy array"),
    (corrupt("intervention_source", lambda a: np.full_like(a, 9)), "unknown source code"),
    (corrupt("intervention", lambda a: np.zeros_like(a)), "disagree"),
    (corrupt("action", lambda a: a * 5), "lie in [-1, 1]"),
    ({k: v for k, v in make_arrays().items() if k != "qpos"}, "missing ['qpos']"),
    (make_arrays(steps=501), "1 to 500 steps"),
])
def test_malformed_arrays_are_rejected_and_nothing_is_written(task, robot, arrays, message):
    with pytest.raises(EpisodeRejected) as rejected:
        ingest(task, robot, arrays=arrays)
    assert message in str(rejected.value)
    assert not Episode.objects.exists() and not EpisodePayload.objects.exists()


def test_an_oversize_payload_is_rejected(task, robot, monkeypatch):
    monkeypatch.setattr(episode_data, "MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(EpisodeRejected, match="limit is 1000"):
        ingest(task, robot)
    assert not Episode.objects.exists()


@pytest.mark.parametrize("overrides, message", [
    ({"robot_id": 999999}, "unknown robot"),
    ({"task": "make-coffee-v3"}, "unknown task"),
    ({"policy_version_id": 999999}, "unknown policy version"),
    ({"uuid": "not-a-uuid"}, "is not a UUID"),
    ({"outcome": "exploded"}, "unknown outcome"),
    ({"source": "dream"}, "unknown episode source"),
    ({"outcome": "success"}, "contradicts the recorded success"),
    ({"seed": 2**64}, "64-bit integer"),
])
def test_bad_metadata_is_rejected_and_nothing_is_written(task, robot, overrides, message):
    if "robot_id" not in overrides:
        overrides = {"robot_id": robot.pk, **overrides}
    with pytest.raises(EpisodeRejected, match=message):
        ingest(task, **overrides)
    assert not Episode.objects.exists()


def test_a_success_ends_the_episode_and_is_accepted(task, robot):
    episode, _ = ingest(task, robot, outcome="success", arrays=make_arrays(steps=30, success_at=29))
    assert episode.outcome == "success" and episode.steps == 30


def test_a_step_limit_lowered_after_the_task_was_cached_still_rejects_and_writes_nothing(task, robot):
    ingest(task, robot)  # this process now knows the task's limit (500)
    Task.objects.filter(pk=task.pk).update(max_steps=40)
    with pytest.raises(EpisodeRejected, match="1 to 40 steps, this one has 50"):
        ingest(task, robot)
    assert Episode.objects.count() == EpisodePayload.objects.count() == 1
    episode, created = ingest(task, robot, arrays=make_arrays(steps=40))
    assert created and episode.steps == 40


def test_a_task_recreated_under_the_same_name_gets_the_new_row(task, robot):
    ingest(task, robot)
    Episode.objects.all().delete()
    task.delete()
    again = Task.objects.create(env_name="pick-place-v3", title="Pick place, again")
    episode, created = ingest(again, robot)
    assert created and episode.task_id == again.pk
    assert Episode.objects.get().task_id == again.pk


def test_an_unknown_robot_is_rejected_even_when_the_task_is_known(task, robot):
    ingest(task, robot)
    with pytest.raises(EpisodeRejected, match="unknown robot 999999"):
        ingest(task, robot_id=999999)
    assert Episode.objects.count() == EpisodePayload.objects.count() == InterventionSegment.objects.count() / 2 == 1


def test_events_go_out_only_when_the_episode_commits(task, robot, django_capture_on_commit_callbacks):
    from core import bus

    listener = bus.client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(bus.EPISODES_CHANNEL, bus.LIVE_CHANNEL)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            episode, _ = ingest(task, robot)
        # The live event, the learner's nudge and the ingested count leave together, after the commit.
        assert len(callbacks) == 1
        def heard(seconds, count):
            messages, deadline = {}, time.monotonic() + seconds
            while len(messages) < count and time.monotonic() < deadline:
                if (m := listener.get_message(timeout=0.1)) is not None:  # None: a subscription's confirmation
                    messages[m["channel"].decode()] = json.loads(m["data"])
            return messages

        assert heard(0.5, 1) == {}
        callbacks[0]()
        event = {"episode": episode.pk, "task": "pick-place-v3", "robot": robot.pk, "version": None,
                 "source": "online", "outcome": "timeout", "autonomous": False, "steps": 50, "intervention_steps": 20,
                 "interventions": 2,
                 "finished_at": episode.finished_at.isoformat()}
        messages = heard(5, 2)
        published_at = messages[bus.LIVE_CHANNEL].pop("at")  # for the web process's lag metric (core.events)
        assert abs(time.time() - published_at) < 10
        assert messages == {bus.LIVE_CHANNEL: {"event": "episode.finished", "data": event},
                            bus.EPISODES_CHANNEL: event}
    finally:
        listener.close()


def test_only_the_gates_and_operators_takeovers_count_as_interventions(task, robot):
    from fleet.models import EpisodeRollup
    from fleet.sim.gate import ANNOTATOR

    arrays = make_arrays()
    arrays["intervention_source"][25:30] = ANNOTATOR  # e.g. relabelled data ingested again
    arrays["intervention"] = arrays["intervention_source"] != 0
    episode, _ = ingest(task, robot, arrays=arrays)
    assert sorted(episode.interventions.values_list("source", flat=True)) == ["annotator", "gate", "operator"]
    assert Episode.objects.get(pk=episode.pk).intervention_count == 2
    assert set(EpisodeRollup.objects.values_list("interventions", flat=True)) == {2}
