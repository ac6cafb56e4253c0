"""Evaluate a policy on fixed held-out seeds per task, in simulation (Django-free)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.stats import wilson


@dataclass
class TaskScore:
    task: str
    successes: int
    episodes: int
    mean_steps_to_success: float | None

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        """The Wilson 95 % interval of the success rate."""
        return wilson(self.successes, self.episodes, z)


def held_out_seeds(episodes_per_task: int, seed_offset: int = 0) -> range:
    """The seeds `evaluate` runs every task on: held out from demonstrations, online episodes and governance's
    evaluations (fleet.sim.envs.SEED_RANGES)."""
    from fleet.sim.envs import HELD_OUT_SEED_BASE, SEED_RANGES

    seeds = range(HELD_OUT_SEED_BASE + seed_offset, HELD_OUT_SEED_BASE + seed_offset + episodes_per_task)
    allowed = SEED_RANGES["held-out evaluation"]
    if episodes_per_task < 1 or seed_offset < 0 or seeds[-1] not in allowed:
        raise ValueError(f"held-out seeds {seed_offset}..{seed_offset + episodes_per_task - 1} are outside "
                         f"0..{len(allowed) - 1}")
    return seeds


def evaluate(policy, tasks: list[str], episodes_per_task: int, seed_offset: int = 0,
             scene_shift: tuple[float, float] | None = None, guidance: float | None = None) -> dict[str, TaskScore]:
    """Run the policy alone (no expert, no operator) on the held-out seeds `held_out_seeds` gives, the same for
    every task and every policy: success is autonomous success. `scene_shift` evaluates on shifted scenes
    (fleet.sim.envs.shift_scene); `guidance` sets a RECAP policy's beta (learner.policy.MLPPolicy.guidance)."""
    from fleet.sim.actor import run_episode
    from fleet.sim.envs import make_task
    from fleet.sim.gate import Gate, GateConfig

    seeds = held_out_seeds(episodes_per_task, seed_offset)
    if guidance is not None:
        policy.guidance = guidance
    scores = {}
    for name in tasks:
        sim = make_task(name, scene_shift=scene_shift)
        gate = Gate(GateConfig(enabled=False))
        steps = []
        for seed in seeds:
            result = run_episode(sim, lambda obs: policy.select_action(obs, name), seed, gate, realtime_factor=0)
            if result.outcome == "success":
                steps.append(result.steps)
        scores[name] = TaskScore(name, len(steps), episodes_per_task, float(np.mean(steps)) if steps else None)
    return scores
