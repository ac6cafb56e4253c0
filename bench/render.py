"""Seconds to render a 500-step episode's replay (fleet.sim.replay.render_video: checks against the task, state
restore and observation check per step, offscreen render, H.264 encoding, atomic write) against a bare
mujoco.Renderer loop drawing the same 500 states in the same run (restore + render, no checks, no encoding, no
file). CPU: OSMesa software rendering unless MUJOCO_GL says otherwise. Needs no database.

    .venv/bin/python bench/render.py [--steps 500] [--reps 5] [--width 320 --height 240]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402

from fleet.sim.actor import run_episode  # noqa: E402  (fleet.sim sets MUJOCO_GL before MuJoCo loads)
from fleet.sim.envs import make_task  # noqa: E402
from fleet.sim.gate import Gate, GateConfig  # noqa: E402
from fleet.sim.replay import FrameRenderer, VideoSpec, render_video  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--task", default="pick-place-v3")
    parser.add_argument("--threads", type=int, default=1, help="render threads, as REVIEW_RENDER_THREADS (default 1)")
    args = parser.parse_args()

    task = make_task(args.task)
    spec = VideoSpec(width=args.width, height=args.height, threads=args.threads)
    # OSMesa reads its thread count once per process, at the first context: the bare baseline's, created first.
    os.environ["LP_NUM_THREADS"] = str(spec.threads)
    # A full-length episode the way the fleet records them: the policy (here, a weak one) with the expert gate.
    rng = np.random.default_rng(0)
    seed = 11
    result = run_episode(task, lambda obs: rng.normal(0, 0.3, 4).astype(np.float32), seed,
                         Gate(GateConfig(no_progress_steps=150, divergence=10.0, min_hold_steps=40)),
                         max_steps=args.steps, realtime_factor=0)
    arrays = result.arrays
    steps = len(arrays["obs"])
    print(f"episode: {steps} steps ({result.outcome}), MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
          f"{spec.width}x{spec.height}, camera {spec.camera}")

    def bare() -> float:
        renderer = FrameRenderer(task, spec)
        task.reset(seed)
        start = time.perf_counter()
        for t in range(steps):
            task.restore(arrays["qpos"][t], arrays["qvel"][t], arrays["mocap_pos"][t], arrays["mocap_quat"][t])
            renderer.render()
        elapsed = time.perf_counter() - start
        renderer.close()
        return elapsed

    out = Path(tempfile.mkdtemp(prefix="sopweb-bench-render-"))

    def product(rep: int) -> tuple[float, int]:
        start = time.perf_counter()
        info = render_video(task, seed, arrays, out / f"replay-{rep}.mp4", spec)
        return time.perf_counter() - start, info["bytes"]

    bare()  # warm up: GL context, shader compilation, the encoder binary in the page cache
    product(-1)
    bare_times, product_times = [], []
    for rep in range(args.reps):  # interleaved, so both see the same machine load
        bare_times.append(bare())
        seconds, size = product(rep)
        product_times.append(seconds)
        print(f"rep {rep}: replay {seconds:.2f} s ({size / 1024:.0f} KiB mp4), "
              f"bare render loop {bare_times[-1]:.2f} s")
    replay, baseline = statistics.median(product_times), statistics.median(bare_times)
    print(f"replay of a {steps}-step episode: {replay:.2f} s = {steps / replay:.0f} frames/s "
          f"(video {steps * task.dt:.2f} s long)")
    print(f"baseline, bare mujoco.Renderer loop over the same states: {baseline:.2f} s = {steps / baseline:.0f} frames/s")
    print(f"render {steps}-step replay ({spec.width}x{spec.height}, {spec.threads} thread(s), "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}): "
          f"{replay:.2f} s, {steps / replay:.0f} frames/s; ratio to the bare render loop {baseline / replay:.2f}")


if __name__ == "__main__":
    main()
