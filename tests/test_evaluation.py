"""The learner's held-out evaluation (learner.evaluation): the experiments' headline metric, its seeds, and the
value function RECAP's advantages come from. Django-free, in-process."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fleet.sim import actor
from fleet.sim.envs import SEED_RANGES, make_task, online_seed
from learner.evaluation import TaskScore, evaluate, held_out_seeds
from learner.value import DistributionalValue


class Expert:
    """The scripted expert, as a policy: what a perfect clone would do."""

    def __init__(self, task: str):
        self.sim = make_task(task)

    def select_action(self, obs, task):
        return self.sim.expert_action(obs)


class Motionless:
    def select_action(self, obs, task):
        return np.zeros(4, np.float32)


def test_the_seed_ranges_are_disjoint_and_every_producer_stays_in_its_own():
    for (a, first), (b, second) in itertools.combinations(SEED_RANGES.items(), 2):
        assert not (first.start < second.stop and second.start < first.stop), (a, b)
    assert all(online_seed() in SEED_RANGES["online"] for _ in range(1000))
    held_out = held_out_seeds(1000, seed_offset=200)
    assert held_out[0] in SEED_RANGES["held-out evaluation"] and held_out[-1] in SEED_RANGES["held-out evaluation"]
    with pytest.raises(ValueError, match="outside"):
        held_out_seeds(10, seed_offset=len(SEED_RANGES["held-out evaluation"]) - 5)
    with pytest.raises(ValueError):
        held_out_seeds(0)


@pytest.mark.django_db
def test_governance_draws_from_its_own_range():
    from django.conf import settings

    from governance.models import Evaluation

    largest = Evaluation(episodes_per_task=1000)  # GOVERNANCE_EVALUATION_EPISODES' upper bound
    assert settings.GOVERNANCE_EVALUATION_EPISODES <= 1000
    assert set(largest.seeds) <= set(SEED_RANGES["governance evaluation"])


def test_every_task_and_every_policy_is_evaluated_on_the_same_held_out_seeds(monkeypatch):
    seen = []

    def recording(task, policy, seed, gate, **kwargs):
        seen.append((task.name, seed, gate.config.enabled, kwargs.get("realtime_factor")))
        return actor.EpisodeResult(seed, {}, 10, "success" if seed % 2 else "timeout", 0.0, 0)

    monkeypatch.setattr(actor, "run_episode", recording)
    scores = evaluate(Motionless(), ["pick-place-v3", "button-press-topdown-v3"], 4, seed_offset=7)
    seeds = list(held_out_seeds(4, seed_offset=7))
    assert seen == [(task, seed, False, 0) for task in ("pick-place-v3", "button-press-topdown-v3") for seed in seeds]
    assert {name: (s.successes, s.episodes) for name, s in scores.items()} == {
        "pick-place-v3": (2, 4), "button-press-topdown-v3": (2, 4)}  # the odd seeds "succeeded"


def test_the_expert_succeeds_where_a_motionless_policy_never_does():
    task = "button-press-topdown-v3"
    expert = evaluate(Expert(task), [task], 3)[task]
    idle = evaluate(Motionless(), [task], 3)[task]
    assert (expert.successes, expert.episodes) == (3, 3) and 0 < expert.mean_steps_to_success < make_task(task).max_steps
    assert (idle.successes, idle.mean_steps_to_success) == (0, None)


def test_a_task_score_gives_its_rate_and_wilson_interval():
    score = TaskScore("pick-place-v3", 8, 10, 120.0)
    low, high = score.wilson()
    assert score.rate == 0.8 and low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert TaskScore("pick-place-v3", 0, 0, None).rate == 0.0


def test_the_value_function_learns_to_order_states_by_how_close_they_are_to_success():
    """A toy task: obs[0] is the progress towards the goal (the other dimensions stay 0). Successful episodes climb
    from 0 to 1 in 50 steps and succeed at the top; failed ones wander below zero. The fitted value must rank
    states by their true return and come close to it."""
    rng = np.random.default_rng(0)
    max_steps, steps = 100, 50

    def episode(success: bool) -> dict:
        obs = np.zeros((steps, 39), np.float32)
        obs[:, 0] = np.linspace(0, 1, steps) if success else rng.uniform(-1.0, -0.5, steps)
        flags = np.zeros(steps, bool)
        flags[-1] = success
        return {"obs": obs, "success": flags}

    value = DistributionalValue(["toy"])
    value.fit([("toy", episode(success=i % 2 == 0), max_steps) for i in range(40)], steps=400, seed=0)
    progress = np.array([0.95, 0.75, 0.5, 0.25, 0.05, -0.75], np.float32)
    obs = np.zeros((len(progress), 39), np.float32)
    obs[:, 0] = progress
    predicted = value.value(obs, "toy")
    # The true return: -(steps left to the success step) / max_steps on the way up, -1 for a failure's states.
    true = np.where(progress >= 0, -(steps - 1) * (1 - progress) / max_steps, -1.0)
    assert list(np.argsort(-predicted)) == list(range(len(progress)))  # ordered as the states are
    assert np.abs(predicted - true).max() < 0.05, (predicted, true)


def test_a_shifted_scene_moves_every_object_and_goal_and_keeps_the_task_solvable():
    from fleet.sim.actor import run_episode
    from fleet.sim.envs import make_task
    from fleet.sim.gate import Gate, GateConfig

    plain, moved = make_task("pick-place-v3"), make_task("pick-place-v3", scene_shift=(0.06, -0.02))
    a, b = plain.reset(1_000_003), moved.reset(1_000_003)
    assert b[4:7] - a[4:7] == pytest.approx([0.06, -0.02, 0.0], abs=1e-6)  # the object
    assert b[-3:] - a[-3:] == pytest.approx([0.06, -0.02, 0.0], abs=1e-6)  # the goal
    assert moved.scene_shift == (0.06, -0.02) and plain.scene_shift is None
    result = run_episode(moved, moved.expert_action, 1_000_003, Gate(GateConfig(enabled=False)), realtime_factor=0)
    assert result.outcome == "success"  # the scripted expert still solves it there
