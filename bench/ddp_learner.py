"""Training samples per second of the data-parallel learner (learner.distributed): two gloo processes on CPU
against one process, the same trainer, buffer and global batch, in the same run, alternating. Each process uses one
torch thread, so the two use two cores where the one uses one. Goal (issue 19): ratio >= 1.6 on an otherwise idle
machine.

    .venv/bin/python bench/ddp_learner.py [--steps 200] [--reps 3] [--batch-size 1024]

Every rank draws the global batch's indices (the same draw one process makes), gathers its own half of the rows
from its replica of the buffer and computes forward and backward on it; what stays serial (the draw, the
resampler, the all-reduces of gradients and group losses) is what keeps the ratio below 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=UserWarning)

TASKS = ["shelf-place-v3", "box-close-v3", "pick-place-v3", "peg-insert-side-v3"]


def worker(out: Path, steps: int, batch_size: int) -> None:
    import numpy as np
    import torch

    from learner.policy import MLPPolicy, PolicyConfig
    from learner.trainer import LearnerConfig, Trainer

    torch.set_num_threads(1)
    group = None
    if "RANK" in os.environ:
        from learner import distributed

        group = distributed.init()
        if group.rank != 0:
            group.follow()
            return
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    trainer = Trainer(MLPPolicy(PolicyConfig(tasks=TASKS)), LearnerConfig(algorithm="hg_dagger",
                                                                          batch_size=batch_size))
    for i in range(800):  # 80 demonstrations and 720 online episodes of 150 steps over 4 tasks
        length = 150
        arrays = {"obs": rng.normal(size=(length, 39)).astype(np.float32),
                  "action": rng.uniform(-1, 1, (length, 4)).astype(np.float32),
                  "expert_action": rng.uniform(-1, 1, (length, 4)).astype(np.float32),
                  "intervention": rng.random(length) < 0.4, "success": np.arange(length) == length - 1}
        trainer.add_episode(TASKS[i % 4], "offline" if i < 80 else "online", arrays, version=i // 100)
    if group is not None:
        group.attach(trainer)
    for _ in range(20):  # warm-up
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    rate = steps * batch_size / (time.perf_counter() - start)
    if group is not None:
        group.stop()
    out.write_text(json.dumps({"samples_per_second": rate}))


def measure(world: int, steps: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "rate.json"
        args = [str(Path(__file__).resolve()), "--worker", str(out), "--steps", str(steps), "--batch-size",
                str(batch_size)]
        torchrun = Path(sys.executable).with_name("torchrun")
        launcher = [sys.executable] if world == 1 else [str(torchrun), "--standalone", "--nproc-per-node",
                                                        str(world)]
        done = subprocess.run([*launcher, *args], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            raise SystemExit(f"the {world}-process run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return json.loads(out.read_text())["samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--worker", type=Path)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.batch_size)
    ratios, ones, twos = [], [], []
    for rep in range(args.reps):
        one, two = measure(1, args.steps, args.batch_size), measure(2, args.steps, args.batch_size)
        ones.append(one), twos.append(two), ratios.append(two / one)
        print(f"rep {rep + 1}: 1 process {one:9,.0f} samples/s   2 gloo processes {two:9,.0f} samples/s   "
              f"ratio {two / one:.3f}", flush=True)
    print(f"median: 1 process {statistics.median(ones):,.0f} samples/s, 2 processes {statistics.median(twos):,.0f} "
          f"samples/s (global batch {args.batch_size}, {os.cpu_count()} cores)")
    print(f"2/1 processes samples/s ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
