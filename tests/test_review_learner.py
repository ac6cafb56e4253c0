"""The learner uses labels: an excluded episode leaves the buffer (also one folded in before it was labelled), and
a relabelled failing segment enters it as intervention frames carrying the scripted expert's actions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import bus
from learner.loop import EpisodeCursor, LabelSync, _fold, sync_labels
from learner.policy import INDICATOR_POSITIVE, MLPPolicy, PolicyConfig
from learner.trainer import LearnerConfig, Trainer
from review.models import ReviewClaim
from tests.reviewing import ingest, recorded, synthetic

TASK = "pick-place-v3"


@pytest.fixture
def task(db):
    from fleet.models import Task

    return Task.objects.create(env_name=TASK, title="Pick place")


def make_trainer(algorithm: str = "hg_dagger") -> Trainer:
    policy = MLPPolicy(PolicyConfig(tasks=[TASK], hidden=[16]))
    return Trainer(policy, LearnerConfig(algorithm=algorithm, batch_size=8, recap_value_steps=5))


def frames(trainer: Trainer, episode_id: int) -> dict:
    """The episode's frames in the buffer (online source), in order."""
    store = trainer.buffer._frames[(TASK, "online")]
    mine = store.episode[: store.size] == episode_id
    return {name: getattr(store, name)[: store.size][mine] for name in ("obs", "target", "intervention", "flag")}


def labelled(episode, user, disposition: str, step: int | None = None):
    ReviewClaim.claim(episode, user)
    return ReviewClaim.submit_label(episode, user, failure_mode="dropped_object", failure_step=step, notes="",
                                    disposition=disposition)


def fold_all(trainer):
    cursor, labels = EpisodeCursor(), LabelSync()
    while _fold(trainer, cursor, labels):
        pass
    return cursor, labels


def test_an_episode_excluded_after_it_was_folded_leaves_the_buffer(task, anna, django_capture_on_commit_callbacks):
    trainer = make_trainer()
    a = ingest(task, synthetic(seed=1, gate=slice(10, 20)))
    b = ingest(task, synthetic(seed=2, gate=slice(5, 15)))
    cursor, labels = fold_all(trainer)
    assert len(frames(trainer, a.pk)["obs"]) == 10 and len(frames(trainer, b.pk)["obs"]) == 10

    pubsub = bus.client().pubsub()
    pubsub.subscribe(bus.EPISODES_CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    with django_capture_on_commit_callbacks(execute=True):
        labelled(a, anna, "exclude")
    nudge = pubsub.get_message(timeout=5)
    assert nudge is not None and json.loads(nudge["data"])["label"] == a.pk  # the learner hears of it at once
    pubsub.close()

    assert sync_labels(trainer, cursor, labels) == 1
    assert len(frames(trainer, a.pk)["obs"]) == 0
    assert len(frames(trainer, b.pk)["obs"]) == 10  # the others stay, untouched
    assert trainer.buffer.size(TASK, "online") == 10
    assert sync_labels(trainer, cursor, labels) == 0  # nothing changed since

    labelled(a, anna, "keep")  # the annotator changed their mind: back in, as recorded
    assert sync_labels(trainer, cursor, labels) == 1
    np.testing.assert_array_equal(frames(trainer, a.pk)["obs"], synthetic(seed=1)["obs"][10:20])


def test_an_episode_labelled_excluded_before_the_learner_saw_it_never_enters(task, anna):
    trainer = make_trainer()
    a = ingest(task, synthetic(seed=1, gate=slice(10, 20)))
    labelled(a, anna, "exclude")
    cursor, labels = fold_all(trainer)
    assert trainer.buffer.size(TASK, "online") == 0
    assert sync_labels(trainer, cursor, labels) == 0  # and is not folded in twice


def test_a_relabelled_segment_enters_hg_daggers_buffer_as_expert_intervention_frames(task, anna):
    trainer = make_trainer("hg_dagger")
    arrays = synthetic(steps=40, seed=3, gate=slice(30, 35))
    episode = ingest(task, arrays)
    cursor, labels = fold_all(trainer)
    assert len(frames(trainer, episode.pk)["obs"]) == 5  # only the gate's frames, so far

    labelled(episode, anna, "relabel", step=20)
    assert sync_labels(trainer, cursor, labels) == 1
    got = frames(trainer, episode.pk)
    np.testing.assert_array_equal(got["obs"], arrays["obs"][20:])
    expected = arrays["expert_action"][20:].copy()
    expected[10:15] = arrays["action"][30:35]  # the gate's frames keep what the gate did (the expert, too)
    np.testing.assert_array_equal(got["target"], expected)
    assert got["intervention"].all()
    assert not np.array_equal(got["target"][:10], arrays["action"][20:30])  # not the policy's actions

    labelled(episode, anna, "exclude")
    sync_labels(trainer, cursor, labels)
    assert len(frames(trainer, episode.pk)["obs"]) == 0


def test_a_relabelled_segment_enters_recaps_buffer_as_positive_expert_frames(task, anna):
    trainer = make_trainer("recap")
    arrays = synthetic(steps=40, seed=4)
    episode = ingest(task, arrays)
    ingest(task, synthetic(steps=40, seed=5))
    cursor, labels = EpisodeCursor(), LabelSync()
    from learner.loop import _pretrain_then_fold

    class Lease:
        lost = False

        def renew(self):
            return True

    _pretrain_then_fold(trainer, cursor, labels, Lease())
    assert len(frames(trainer, episode.pk)["obs"]) == 40  # RECAP keeps every frame, labelled by its advantage

    labelled(episode, anna, "relabel", step=25)
    sync_labels(trainer, cursor, labels)
    got = frames(trainer, episode.pk)
    assert len(got["obs"]) == 40
    np.testing.assert_array_equal(got["target"][25:], arrays["expert_action"][25:])
    np.testing.assert_array_equal(got["target"][:25], arrays["action"][:25])
    assert got["intervention"][25:].all() and not got["intervention"][:25].any()
    assert (got["flag"][25:] == INDICATOR_POSITIVE).all()  # corrections are always positive


def test_the_recorded_expert_action_is_the_scripted_expert_on_the_recorded_state():
    """Relabelling takes the expert's actions from the payload: the actor records them at every step, on the very
    observation the robot saw, so no re-simulation is needed. Checked here against the expert itself."""
    from fleet.sim.envs import make_task

    arrays = recorded(steps=60)
    expert = make_task(TASK)
    again = np.stack([np.clip(expert.expert_action(obs), -1, 1) for obs in arrays["obs"]])
    np.testing.assert_allclose(again, arrays["expert_action"], atol=1e-6)
    assert not arrays["intervention"].any()  # a policy-only episode: every step is there to be relabelled


def test_an_episode_the_learner_cannot_fold_is_skipped_and_reported_once(task, anna, caplog):
    from core.models import AuditEvent
    from review.models import EpisodeLabel

    trainer = make_trainer()
    bad = ingest(task, synthetic(seed=1, gate=slice(10, 20)))
    good = ingest(task, synthetic(seed=2, gate=slice(5, 15)))
    labelled(bad, anna, "relabel", step=20)
    # A failure step past the episode's end, as a write outside the form could leave it (no constraint can see
    # the episode's length): folding it raises, and must not stop the learner.
    EpisodeLabel.objects.filter(episode=bad).update(failure_step=10_000)
    cursor, labels = fold_all(trainer)
    assert len(frames(trainer, bad.pk)["obs"]) == 0 and len(frames(trainer, good.pk)["obs"]) == 10
    skipped = AuditEvent.objects.get(verb="learner.skip_episode")
    assert skipped.object_id == str(bad.pk) and "10000" in skipped.reason
    assert f"episode {bad.pk} skipped" in caplog.text
    assert sync_labels(trainer, cursor, labels) == 0  # not retried at every poll
    labelled(bad, anna, "relabel", step=25)  # the label mended: it is folded
    assert sync_labels(trainer, cursor, labels) == 1 and len(frames(trainer, bad.pk)["obs"]) == 10 + 15
    assert AuditEvent.objects.filter(verb="learner.skip_episode").count() == 1
