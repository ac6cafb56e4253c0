"""The data-parallel learner (learner.distributed, learner.service): a torchrun group of two gloo processes on CPU
computes the single process's steps, and as the learner service it trains the fleet's run, publishes versions that
the actors then run, and resumes from its saved state after the whole group is killed."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from django.core.management import call_command

from core import bus
from fleet import control
from learner.loop import LEASE_KEY
from learner.models import PolicyVersion, TrainingMetric, TrainingRun
from tests.conftest import ROOT, process_env, wait_for
from tests.test_learner_stack import LEARNER_ENV, fleet_with_base  # noqa: F401  (the fixture)

TORCHRUN = str(ROOT / ".venv" / "bin" / "torchrun") if (ROOT / ".venv" / "bin" / "torchrun").exists() else "torchrun"


def probe(out, steps: int, batch: int, world: int) -> dict:
    out.mkdir()
    launcher = [sys.executable] if world == 1 else [TORCHRUN, "--standalone", "--nproc-per-node", str(world)]
    result = subprocess.run([*launcher, "tests/ddp_probe.py", str(out), str(steps), str(batch)], cwd=ROOT,
                            env=process_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return {rank: json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(world)}


def test_two_gloo_processes_take_the_single_process_steps_on_the_same_global_batch(tmp_path):
    alone = probe(tmp_path / "one", steps=40, batch=64, world=1)[0]
    group = probe(tmp_path / "two", steps=40, batch=64, world=2)
    # The same global batch (each rank draws it as one process would, from its replica of the buffer, and takes its
    # half), the halves' gradients averaged: the same step, up to the order of float sums. The probe forms the
    # group after 12 steps (the RNG and the resampler have moved) and folds one episode in and takes one out
    # half-way, so the replicas' RNG, resampler and buffer must all follow rank 0's for the losses to match.
    np.testing.assert_allclose(group[0]["losses"], alone["losses"], rtol=1e-4)
    assert alone["losses"][-1] < alone["losses"][0]  # it learns
    assert group[0]["checksum"] == group[1]["checksum"]  # the replicas stayed identical
    assert group[0]["checksum"] == pytest.approx(alone["checksum"], rel=1e-5)


class LearnerService:
    """`python -m learner.service` with LEARNER_WORLD_SIZE=2: torchrun and its two ranks, in a session of their
    own so the whole group can be killed at once."""

    def __init__(self, log, **env):
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "learner.service"], cwd=ROOT,
                                         env=process_env(LEARNER_WORLD_SIZE=2, **env), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def test_the_learner_service_trains_as_a_group_and_resumes_after_the_group_is_killed(
        start_worker, fleet_with_base, olivia, tmp_path, settings):  # noqa: F811
    settings.LEARNER_WORLD_SIZE = 2  # every host's setting: this process starts the run, as the web process would
    robot = fleet_with_base
    bus.client().delete(LEASE_KEY)
    bus.client().delete("learner")  # a slice an earlier test of this stream queued with no worker to take it
    env = {**LEARNER_ENV, "LEARNER_SLICE_SECONDS": 10, "LEARNER_SAVE_SECONDS": 5}
    start_worker("actors", queues="actors", FLEET_REALTIME_FACTOR=0, **env)
    service = LearnerService(tmp_path / "learner.log", **env)
    try:
        control.start(robot, olivia)
        call_command("learner", "start", stdout=io.StringIO())
        wait_for(lambda: PolicyVersion.objects.filter(number__gte=3, state__in=["deployed", "retired"]).exists(),
                 240, "the group to publish two versions that continuous mode deploys")
        log = service.log.read_text()
        assert "data-parallel learner: 2 processes, rank 0 leads" in log
        wait_for(lambda: robot.episodes.filter(policy_version__number__gte=2).exists(), 120,
                 "an episode on a version the group published")
        assert not bus.client().llen("learner")  # no Celery slice was queued for a learner worker

        service.kill()  # every rank at once, as a lost machine would
        run = TrainingRun.objects.get(status="active")
        saved_step = run.step
        assert saved_step >= 40 and run.state_path
        newest = PolicyVersion.objects.order_by("-number").first().number
        bus.client().delete(LEASE_KEY)  # what the lease's expiry does, without waiting for it
        service = LearnerService(tmp_path / "learner.log", **env)
        wait_for(lambda: PolicyVersion.objects.filter(number__gt=newest).exists(), 240, "a version after the restart")
        after = PolicyVersion.objects.get(number=newest + 1)
        assert after.train_steps > saved_step  # it went on from the saved step, not from zero
        resumed = wait_for(lambda: TrainingMetric.objects.filter(run=run).exclude(resumed_from=None).first(), 120,
                           "the first metric after the restart")
        assert resumed.resumed_from == saved_step  # the metric says where training went on from
    finally:
        control.stop(robot, olivia)
        call_command("learner", "stop", stdout=io.StringIO())
        service.stop()
