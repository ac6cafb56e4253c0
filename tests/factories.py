"""Test data shared by the test modules: tasks, and recorded-episode arrays of the payload schema."""
from __future__ import annotations

import numpy as np

from fleet.sim.gate import GATE, OPERATOR


def make_arrays(steps: int = 50, nq: int = 16, nv: int = 15, success_at: int | None = None) -> dict:
    rng = np.random.default_rng(steps)
    source = np.zeros(steps, np.uint8)
    source[10:20] = GATE
    source[40:] = OPERATOR
    success = np.zeros(steps, bool)
    if success_at is not None:
        success[success_at] = True
    return {
        "obs": rng.normal(size=(steps, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(steps, 4)).astype(np.float32),
        "expert_action": rng.uniform(-1, 1, size=(steps, 4)).astype(np.float32),
        "intervention": source != 0,
        "intervention_source": source,
        "reward": rng.uniform(0, 1, size=steps).astype(np.float32),
        "success": success,
        "qpos": rng.normal(size=(steps, nq)).astype(np.float32),
        "qvel": rng.normal(size=(steps, nv)).astype(np.float32),
        "mocap_pos": rng.normal(size=(steps, 3)).astype(np.float32),
        "mocap_quat": rng.normal(size=(steps, 4)).astype(np.float32),
    }


TASK_NAMES = ["pick-place-v3", "shelf-place-v3"]


def make_tasks(names=TASK_NAMES, max_steps: int = 120) -> list:
    """Task rows, in the order given. Short episodes keep the suite quick; the step limit is the task's own."""
    from fleet.models import Task

    return [Task.objects.create(env_name=name, title=name, max_steps=max_steps) for name in names]
