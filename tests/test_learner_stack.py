"""The learner on the real stack: it folds the fleet's episodes in, publishes versions the actors then run, and
resumes after SIGKILL without reusing a version number."""
from __future__ import annotations

import io
from dataclasses import asdict

import pytest
from django.core.management import call_command

from core import bus
from fleet import control
from fleet.models import Episode, Robot, Task
from governance import mode as rollout_mode
from learner.loop import LEASE_KEY
from learner.models import PolicyVersion, TrainingMetric, TrainingRun
from learner.tasks import ensure_running
from tests.conftest import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LEARNER_ENV = {"LEARNER_PUBLISH_EVERY": 40, "ROLLOUT_MODE": "continuous", "LEARNER_SLICE_SECONDS": 20,
               "LEARNER_BATCH_SIZE": 64}


@pytest.fixture
def fleet_with_base(transactional_db, settings):
    # A run's config is made by `learner start` in this process, from these settings.
    settings.LEARNER_PUBLISH_EVERY = LEARNER_ENV["LEARNER_PUBLISH_EVERY"]
    settings.LEARNER_BATCH_SIZE = LEARNER_ENV["LEARNER_BATCH_SIZE"]
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=100)
    robot = Robot.objects.create(name="sim-learn")
    robot.tasks.set([task])
    call_command("generate_demos", "--per-task", "2", stdout=io.StringIO())
    call_command("pretrain_base", "--demos-per-task", "2", "--steps", "20", "--deploy", stdout=io.StringIO())
    return robot


@pytest.mark.parametrize("algorithm", ["hg_dagger", "recap"])
def test_the_learner_publishes_versions_that_actors_then_run(start_worker, fleet_with_base, olivia, algorithm,
                                                             settings):
    settings.LEARNER_RECAP_VALUE_STEPS = 100
    robot = fleet_with_base
    bus.client().delete(LEASE_KEY)
    start_worker("actors", queues="actors", FLEET_REALTIME_FACTOR=0, **LEARNER_ENV)
    # RECAP's run starts before any rollout and waits for three of the base version before it fits its value.
    start_worker("learner", queues="learner,default,control", LEARNER_ALGORITHM=algorithm,
                 LEARNER_RECAP_BASE_ROLLOUTS=3, **LEARNER_ENV)
    call_command("learner", "start", "--as", "olivia", "--algorithm", algorithm, stdout=io.StringIO())
    control.start(robot, olivia)

    wait_for(lambda: PolicyVersion.objects.filter(number__gte=2, state="deployed").exists(), 120,
             "the learner to publish and (continuous mode) deploy version 2")
    v2 = PolicyVersion.objects.get(number=2)
    assert v2.parent.number == 1 and v2.algorithm == algorithm and v2.train_steps == 40
    assert v2.samples_offline > 0
    wait_for(lambda: Episode.objects.filter(robot=robot, policy_version__number__gte=2).exists(), 60,
             "an episode on a learner-published version")
    wait_for(lambda: TrainingMetric.objects.exists(), 60, "the learner's first metrics (every 50 steps)")
    metric = TrainingMetric.objects.order_by("-step").first()
    assert metric.samples_per_second > 0 and "pick-place-v3" in metric.tasks
    if algorithm == "recap":  # no step before the third base rollout was stored
        third = Episode.objects.filter(policy_version__number=1).order_by("created_at")[2]
        assert TrainingMetric.objects.order_by("created_at").first().created_at > third.created_at
    w_on = metric.tasks["pick-place-v3"]["w_on"]
    assert 0.2 <= w_on <= 0.8 and w_on != 0.5  # the resampler moved the share from its start, within its clip
    control.stop(robot, olivia)
    call_command("learner", "stop", stdout=io.StringIO())


def test_a_killed_learner_resumes_with_the_next_version_number(start_worker, fleet_with_base, olivia):
    robot = fleet_with_base
    bus.client().delete(LEASE_KEY)
    start_worker("actors", queues="actors", FLEET_REALTIME_FACTOR=0, **LEARNER_ENV)
    learner = start_worker("learner", queues="learner", **LEARNER_ENV)
    control.start(robot, olivia)
    call_command("learner", "start", stdout=io.StringIO())
    wait_for(lambda: PolicyVersion.objects.filter(number__gte=3).exists(), 180, "two learner versions")
    learner.kill()
    run = TrainingRun.objects.get(status="active")
    saved_step = run.step
    assert saved_step >= 40 and run.state_path
    numbers_before = set(PolicyVersion.objects.values_list("number", flat=True))

    bus.client().delete(LEASE_KEY)  # what the lease's expiry does, without waiting two minutes
    start_worker("learner-again", queues="learner", **LEARNER_ENV)
    assert ensure_running.apply().get() is True  # beat's watchdog finds the run without a learner
    newest = max(numbers_before)
    wait_for(lambda: PolicyVersion.objects.filter(number__gt=newest).exists(), 180, "a version after the restart")
    after = PolicyVersion.objects.get(number=newest + 1)
    assert after.train_steps > saved_step  # it went on from its saved step, not from zero
    control.stop(robot, olivia)
    call_command("learner", "stop", stdout=io.StringIO())


def test_a_supervisor_stops_and_resumes_continuous_deployment_while_the_learner_runs(start_worker, fleet_with_base,
                                                                                     olivia, sam, settings):
    """The learner's process has ROLLOUT_MODE=continuous in its environment; the row a supervisor sets wins, at once."""
    settings.LEARNER_PUBLISH_EVERY = 10  # more publications, sooner
    settings.ROLLOUT_MODE = "continuous"  # this process shares the workers' environment, as the web process does
    robot = fleet_with_base
    bus.client().delete(LEASE_KEY)
    env = {**LEARNER_ENV, "LEARNER_PUBLISH_EVERY": 10}
    start_worker("actors", queues="actors", FLEET_REALTIME_FACTOR=0, **env)
    start_worker("learner", queues="learner", **env)
    control.start(robot, olivia)
    call_command("learner", "start", stdout=io.StringIO())

    def deployed() -> int:
        return PolicyVersion.objects.get(state="deployed").number

    def two_more_published(after: int) -> int:
        wait_for(lambda: PolicyVersion.objects.filter(number__gt=after + 1).exists(), 180,
                 f"two versions published after v{after}")
        return PolicyVersion.objects.order_by("-number").first().number

    wait_for(lambda: deployed() >= 2, 120, "continuous mode to deploy a learner version")
    rollout_mode.freeze(sam, reason="incident")
    frozen_at = PolicyVersion.objects.order_by("-number").first().number
    newest = two_more_published(frozen_at)
    assert deployed() <= frozen_at  # published, not deployed

    rollout_mode.unfreeze(sam, reason="over")
    rollout_mode.set_mode("manual", sam, reason="hold the fleet")
    held = deployed()
    newest = two_more_published(newest)
    assert deployed() == held  # manual, whatever the learner's environment says

    rollout_mode.set_mode("continuous", sam, reason="learn again")
    wait_for(lambda: deployed() > newest, 120, "continuous mode to deploy again")
    control.stop(robot, olivia)
    call_command("learner", "stop", stdout=io.StringIO())


def test_the_next_slice_in_the_same_process_keeps_its_trainer_unless_the_run_moved_on(fleet_with_base, settings,
                                                                                      monkeypatch):
    import torch

    from learner import loop
    from learner.trainer import LearnerConfig

    threads = torch.get_num_threads()
    settings.LEARNER_TORCH_THREADS = threads + 1  # not what torch runs with now, so the slice must set it
    monkeypatch.setattr(loop, "_enqueue", lambda: None)  # no worker here to take the next slice
    monkeypatch.setattr(loop, "_resident", {})
    bus.client().delete(LEASE_KEY)
    base = PolicyVersion.objects.get()
    run = TrainingRun.objects.create(algorithm="hg_dagger", base_version=base,
                                     config=asdict(LearnerConfig(batch_size=32, publish_every=10_000)))
    try:
        loop.run_slice(seconds=3)  # the slice's time includes building its buffer: long enough to train too
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)  # this test process's own setting back
        settings.LEARNER_TORCH_THREADS = threads  # and the slices below keep it
    trainer = loop._resident["trainer"]
    assert trainer.step > 0
    frames = trainer.buffer.sizes()
    assert sum(f["offline"] for f in frames.values()) > 0

    loop.run_slice(seconds=0.5)
    assert loop._resident["trainer"] is trainer  # carried on: no rebuild, the same buffer
    assert trainer.buffer.sizes() == frames  # and nothing folded twice
    assert TrainingRun.objects.get(pk=run.pk).step == trainer.step

    assert not TrainingMetric.objects.filter(run=run, resumed_from__isnull=False).exists()  # no restart yet
    saved = trainer.step
    TrainingRun.objects.filter(pk=run.pk).update(step=trainer.step + 7)  # another learner trained meanwhile
    every = loop.METRICS_EVERY
    monkeypatch.setattr(loop, "METRICS_EVERY", 1)  # a point at every step: the short slice records some
    loop.run_slice(seconds=0.5)
    rebuilt = loop._resident["trainer"]
    assert rebuilt is not trainer and rebuilt.buffer.sizes() == frames  # from the saved state and the table
    # A restart: the rebuilt slice's first point says which saved step it resumed from (the learner page marks it).
    [restart] = TrainingMetric.objects.filter(run=run, resumed_from__isnull=False)
    assert restart.resumed_from == saved and restart.step > saved
    assert restart == TrainingMetric.objects.filter(run=run, created_at__gte=restart.created_at).earliest("id")
    monkeypatch.setattr(loop, "METRICS_EVERY", every)

    # The lease lapses right after a slice took it (a long stall) and another learner takes the run over: the slice
    # notices at its next renewal — at the latest before it saves — and stops without saving over the other
    # learner's state. First with this process's trainer carried over (no fold, no renewal until the save), then
    # rebuilt (the fold renews).
    monkeypatch.setattr(loop, "configure_threads", lambda: bus.client().set(LEASE_KEY, "another learner", ex=60))
    try:
        for carried_over in (True, False):
            assert bool(loop._resident) is carried_over  # a slice that lost its lease leaves nothing behind
            saved = TrainingRun.objects.get(pk=run.pk).step
            assert loop.run_slice(seconds=0.5) == "lease lost"
            assert TrainingRun.objects.get(pk=run.pk).step == saved and loop._resident == {}  # nothing saved or kept
            assert bus.client().get(LEASE_KEY) == b"another learner"  # and the other learner's lease is left alone
            bus.client().delete(LEASE_KEY)
    finally:
        bus.client().delete(LEASE_KEY)

    TrainingRun.objects.get(pk=run.pk).stop(reason="test done")
