"""Training samples per second of the learner's step — resampler plan, buffer sampling, batch assembly, loss,
backward, optimizer, resampler bookkeeping — against a pure torch loop on pre-built tensors with the same model,
optimizer and batch size, in the same run. Goal: ratio >= 0.8.

    .venv/bin/python bench/learner_throughput.py [--steps 300] [--reps 5] [--algorithm hg_dagger]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from learner.policy import MLPPolicy, PolicyConfig  # noqa: E402
from learner.trainer import LearnerConfig, Trainer  # noqa: E402

TASKS = ["shelf-place-v3", "box-close-v3", "pick-place-v3", "peg-insert-side-v3"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--algorithm", default="hg_dagger")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    trainer = Trainer(MLPPolicy(PolicyConfig(tasks=TASKS)), LearnerConfig(algorithm=args.algorithm,
                                                                          batch_size=args.batch_size))
    # A buffer the size of a long run: 200 demonstrations and 2,000 online episodes of 150 steps over 4 tasks.
    for i in range(2200):
        steps = 150
        intervention = rng.random(steps) < 0.4
        arrays = {"obs": rng.normal(size=(steps, 39)).astype(np.float32),
                  "action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                  "expert_action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                  "intervention": intervention, "success": np.arange(steps) == steps - 1}
        trainer.add_episode(TASKS[i % 4], "offline" if i < 200 else "online", arrays, version=i // 100)
    print(f"buffer: {sum(sum(v.values()) for v in trainer.buffer.sizes().values()):,} frames")

    # The baseline: the same network, optimizer and loss on tensors built once, nothing else.
    pure = MLPPolicy(PolicyConfig(tasks=TASKS))
    pure.load_state_dict(trainer.policy.state_dict())
    optimizer = torch.optim.Adam(pure.parameters(), lr=3e-4)
    n = 100_000
    obs, target = torch.randn(n, 39), torch.rand(n, 4) * 2 - 1
    task = torch.randint(0, 4, (n,))

    def pure_loop(steps):
        start = time.perf_counter()
        for _ in range(steps):
            index = torch.randint(0, n, (args.batch_size,))
            loss = ((pure(obs[index], task[index]) - target[index]) ** 2).mean(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * args.batch_size / (time.perf_counter() - start)

    def learner_loop(steps):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * args.batch_size / (time.perf_counter() - start)

    pure_loop(30), learner_loop(30)  # warm-up
    ratios, pures, learners = [], [], []
    for rep in range(args.reps):
        p, l_ = pure_loop(args.steps), learner_loop(args.steps)
        pures.append(p), learners.append(l_), ratios.append(l_ / p)
        print(f"rep {rep + 1}: pure torch {p:9,.0f} samples/s   learner {l_:9,.0f} samples/s   ratio {l_ / p:.3f}")
    print(f"median: pure {statistics.median(pures):,.0f} samples/s, learner {statistics.median(learners):,.0f} "
          f"samples/s ({torch.get_num_threads()} torch threads)")
    print(f"learner/pure ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
