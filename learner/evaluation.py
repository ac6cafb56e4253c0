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


def evaluate(policy, tasks: list[str], episodes_per_task: int, seed_offset: int = 0) -> dict[str, TaskScore]:
    """Run the policy alone (no expert) on evaluation seeds seed_offset .. seed_offset + episodes_per_task - 1."""
    from fleet.sim.actor import run_episode
    from fleet.sim.envs import EVALUATION_SEED_BASE, make_task
    from fleet.sim.gate import Gate, GateConfig

    scores = {}
    for name in tasks:
        sim = make_task(name)
        gate = Gate(GateConfig(enabled=False))
        steps = []
        for i in range(episodes_per_task):
            seed = EVALUATION_SEED_BASE + seed_offset + i
            result = run_episode(sim, lambda obs: policy.select_action(obs, name), seed, gate, realtime_factor=0)
            if result.outcome == "success":
                steps.append(result.steps)
        scores[name] = TaskScore(name, len(steps), episodes_per_task, float(np.mean(steps)) if steps else None)
    return scores
