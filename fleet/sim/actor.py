"""The actor loop: one episode of one robot, paced at its control rate, with the expert gate and an optional
operator takeover. Django-free; the Celery task in fleet/tasks.py wraps it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fleet.sim.envs import SimTask
from fleet.sim.episode_data import EpisodeRecorder, segments
from fleet.sim.gate import POLICY, Gate

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class EpisodeResult:
    seed: int
    arrays: dict
    steps: int
    outcome: str  # success | timeout | aborted
    total_return: float
    intervention_steps: int
    segments: list = field(default_factory=list)
    takeovers: int = 0
    takeover_doubts: list = field(default_factory=list)
    wall_seconds: float = 0.0


def run_episode(task: SimTask, policy: Policy, seed: int, gate: Gate, *, max_steps: int | None = None,
                realtime_factor: float = 1.0, poll: Callable[[], str | None] | None = None,
                poll_every: int = 8, doubt: Callable[[np.ndarray], float] | None = None) -> EpisodeResult:
    """Run one episode. `poll()` is called every `poll_every` steps and may answer "takeover" (an operator wants
    the expert in control for the rest of the episode) or "abort" (stop now, e.g. the robot was paused).
    `doubt(obs)`, for an ensemble policy, is logged at every gate takeover (HG-DAgger's risk threshold data)."""
    max_steps = min(max_steps or task.max_steps, task.max_steps)
    period = task.dt / realtime_factor if realtime_factor > 0 else 0.0
    model = task.env.model
    recorder = EpisodeRecorder(max_steps, model.nq, model.nv)
    gate.reset()
    obs = task.reset(seed)
    progress = 0.0
    outcome = "timeout"
    doubts = []
    start = time.monotonic()
    for t in range(max_steps):
        if poll is not None and t % poll_every == 0:
            command = poll()
            if command == "takeover":
                gate.operator_takeover()
            elif command == "abort":
                outcome = "aborted"
                break
        snapshot = task.snapshot()
        policy_action = np.clip(policy(obs), -1.0, 1.0).astype(np.float32)
        expert_action = np.clip(task.expert_action(obs), -1.0, 1.0)
        takeovers = gate.takeovers
        source = gate.decide(progress, policy_action, expert_action)
        if doubt is not None and gate.takeovers > takeovers:
            doubts.append(round(float(doubt(obs)), 6))
        action = policy_action if source == POLICY else expert_action
        next_obs, reward, info = task.step(action)
        success = bool(info["success"])
        recorder.record(obs, action, expert_action, source, reward, success, snapshot)
        obs, progress = next_obs, reward
        if success:
            outcome = "success"
            break
        if period:
            delay = start + (t + 1) * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    if recorder.steps == 0:  # aborted before the first step: nothing to keep
        return EpisodeResult(seed, {}, 0, "aborted", 0.0, 0, wall_seconds=time.monotonic() - start)
    arrays = recorder.finish()
    return EpisodeResult(
        seed=seed,
        arrays=arrays,
        steps=recorder.steps,
        outcome=outcome,
        total_return=float(arrays["reward"].sum(dtype=np.float64)),
        intervention_steps=int(arrays["intervention"].sum()),
        segments=segments(arrays["intervention_source"]),
        takeovers=gate.takeovers,
        takeover_doubts=doubts,
        wall_seconds=time.monotonic() - start,
    )
