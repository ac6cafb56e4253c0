"""Episodes for the review tests: recorded in the real simulator (for replays) or synthetic (for the learner)."""
from __future__ import annotations

import uuid
from datetime import timedelta
from functools import lru_cache

import numpy as np
from django.utils import timezone

from fleet.ingest import ingest_episode
from fleet.sim.gate import GATE, POLICY


@lru_cache(maxsize=None)
def _recorded(task_name: str, seed: int, steps: int) -> dict:
    from fleet.sim.actor import run_episode
    from fleet.sim.envs import make_task
    from fleet.sim.gate import Gate, GateConfig

    task = make_task(task_name)
    rng = np.random.default_rng(seed)
    # A policy that flails: the episode times out, as the ones annotators look at do.
    result = run_episode(task, lambda obs: rng.uniform(-1, 1, 4).astype(np.float32), seed,
                         Gate(GateConfig(enabled=False)), max_steps=steps, realtime_factor=0)
    assert result.outcome == "timeout"
    return result.arrays


def recorded(task_name: str = "pick-place-v3", seed: int = 7, steps: int = 60) -> dict:
    """A real episode's arrays (copies: tests may tamper with them)."""
    return {name: array.copy() for name, array in _recorded(task_name, seed, steps).items()}


def synthetic(steps: int = 40, seed: int = 0, gate: slice | None = None) -> dict:
    """Arrays that pass validation (not physically meaningful): for the learner, which never simulates."""
    rng = np.random.default_rng(seed)
    source = np.full(steps, POLICY, np.uint8)
    if gate is not None:
        source[gate] = GATE
    return {
        "obs": rng.normal(size=(steps, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        "expert_action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        "intervention": source != POLICY,
        "intervention_source": source,
        "reward": rng.uniform(0, 1, steps).astype(np.float32),
        "success": np.zeros(steps, bool),
        "qpos": rng.normal(size=(steps, 16)).astype(np.float32),
        "qvel": rng.normal(size=(steps, 15)).astype(np.float32),
        "mocap_pos": rng.normal(size=(steps, 3)).astype(np.float32),
        "mocap_quat": rng.normal(size=(steps, 4)).astype(np.float32),
    }


def ingest(task, arrays: dict, *, seed: int = 7, outcome: str = "timeout", robot=None, version=None,
           source: str = "online", finished_at=None):
    finished = finished_at or timezone.now()
    episode, created = ingest_episode(
        uuid=uuid.uuid4(), task=task.env_name, seed=seed, outcome=outcome, arrays=arrays,
        started_at=finished - timedelta(seconds=5), finished_at=finished, robot_id=robot.pk if robot else None,
        policy_version_id=version.pk if version else None, source=source)
    assert created
    return episode
