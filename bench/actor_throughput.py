"""Env steps per second of the actor loop at real-time factor 0 — policy inference, expert gate, recording,
validation, encoding and ingestion into PostgreSQL included — divided by a bare loop (same env, same policy,
same seeds, nothing else) in the same run. Goal: ratio >= 0.85.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/actor_throughput.py [--episodes 6] [--reps 5]
"""
from __future__ import annotations

import argparse
import time
import uuid
from datetime import timedelta

import _django

_django.setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from django.utils import timezone  # noqa: E402

from fleet.ingest import ingest_episode  # noqa: E402
from fleet.models import Robot, Task  # noqa: E402
from fleet.sim.actor import run_episode  # noqa: E402
from fleet.sim.envs import make_task  # noqa: E402
from fleet.sim.gate import Gate, GateConfig  # noqa: E402
from learner.policy import MLPPolicy, PolicyConfig  # noqa: E402

TASK = "pick-place-v3"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=6, help="500-step episodes per measurement")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in an actor process
    torch.manual_seed(0)
    policy = MLPPolicy(PolicyConfig(tasks=[TASK])).eval()  # untrained: every episode runs its full 500 steps
    act = lambda obs: policy.select_action(obs, TASK)  # noqa: E731
    sim = make_task(TASK)
    Task.objects.create(env_name=TASK, title="Pick place")
    robot = Robot.objects.create(name="bench-robot")
    # The gate watches every step (expert action, progress, divergence) but never fires, so both loops execute
    # exactly the same actions and physics; only the bookkeeping differs.
    never_fires = GateConfig(no_progress_steps=10_000, divergence=100.0)

    def bare(seeds):
        steps, start = 0, time.perf_counter()
        for seed in seeds:
            obs = sim.reset(seed)
            for _ in range(sim.max_steps):
                obs, reward, info = sim.step(np.clip(act(obs), -1, 1))
                steps += 1
                if info["success"]:
                    break
        return steps / (time.perf_counter() - start)

    def actor(seeds):
        steps, start = 0, time.perf_counter()
        for seed in seeds:
            began = timezone.now()
            result = run_episode(sim, act, seed, Gate(never_fires), realtime_factor=0)
            ingest_episode(uuid=uuid.uuid4(), task=TASK, seed=seed, outcome=result.outcome, arrays=result.arrays,
                           started_at=began, finished_at=began + timedelta(seconds=result.wall_seconds),
                           robot_id=robot.pk, meta={"gate": never_fires.as_dict()})
            steps += result.steps
        return steps / (time.perf_counter() - start)

    seeds = list(range(args.episodes))
    bare(seeds[:1]), actor(seeds[:1])  # warm-up
    ratios, bares, actors = [], [], []
    for rep in range(args.reps):  # interleaved, so the machine's drift hits both alike
        b, a = bare(seeds), actor(seeds)
        bares.append(b), actors.append(a), ratios.append(a / b)
        print(f"rep {rep + 1}: bare loop {b:7.0f} steps/s   actor loop {a:7.0f} steps/s   ratio {a / b:.3f}")
    print(f"median: bare {_django.median(bares):.0f} steps/s, actor {_django.median(actors):.0f} steps/s")
    print(f"actor/bare ratio: {_django.median(ratios):.3f}")


if __name__ == "__main__":
    main()
