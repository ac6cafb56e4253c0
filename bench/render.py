"""Seconds to render a 500-step episode's replay as the product does (fleet.sim.replay.render_video with the
worker's defaults: every 2nd control step at 40 fps, no multisampling, one render thread; checks against the task,
state restore and observation check per step, offscreen render, H.264 encoding, atomic write). Goal: at most 10 s
on this 2-core machine, so that an annotator who opens an episode nobody rendered barely waits.

Measured in the same run, interleaved so that both see the same machine load: the replay as it was rendered
before (one frame per control step at 80 fps, 4x multisampling), and a bare mujoco.Renderer loop drawing the
product's frames (restore + render, no checks, no encoding, no file: what the pipeline adds). CPU: OSMesa software
rendering unless MUJOCO_GL says otherwise. Needs no database.

    .venv/bin/python bench/render.py [--steps 500] [--reps 3] [--width 320 --height 240] [--stride 2]
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
from fleet.sim.replay import FrameRenderer, VideoSpec, frame_steps, render_video  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--task", default="pick-place-v3")
    parser.add_argument("--threads", type=int, default=1, help="render threads, as REVIEW_RENDER_THREADS (default 1)")
    parser.add_argument("--stride", type=int, default=2, help="control steps per frame, as REVIEW_VIDEO_STRIDE")
    args = parser.parse_args()

    task = make_task(args.task)
    spec = VideoSpec(width=args.width, height=args.height, threads=args.threads, stride=args.stride)
    before = VideoSpec(width=args.width, height=args.height, threads=args.threads, stride=1, antialias=True)
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
        for t in frame_steps(steps, spec.stride):
            task.restore(arrays["qpos"][t], arrays["qvel"][t], arrays["mocap_pos"][t], arrays["mocap_quat"][t])
            renderer.render()
        elapsed = time.perf_counter() - start
        renderer.close()
        return elapsed

    out = Path(tempfile.mkdtemp(prefix="sopweb-bench-render-"))

    def replay(rep: int, video: VideoSpec) -> tuple[float, int]:
        start = time.perf_counter()
        info = render_video(task, seed, arrays, out / f"replay-{rep}-{video.stride}.mp4", video)
        return time.perf_counter() - start, info["bytes"]

    bare()  # warm up: GL context, shader compilation, the encoder binary in the page cache
    replay(-1, spec)
    bare_times, product_times, before_times = [], [], []
    for rep in range(args.reps):  # interleaved, so that all three see the same machine load
        bare_times.append(bare())
        seconds, size = replay(rep, spec)
        product_times.append(seconds)
        before_times.append(replay(rep, before)[0])
        print(f"rep {rep}: replay {seconds:.2f} s ({size / 1024:.0f} KiB mp4), "
              f"as rendered before {before_times[-1]:.2f} s, bare render loop {bare_times[-1]:.2f} s")
    product, baseline, old = (statistics.median(times) for times in (product_times, bare_times, before_times))
    frames = len(frame_steps(steps, spec.stride))
    fps = 1 / (task.dt * spec.stride)
    print(f"replay of a {steps}-step episode: {product:.2f} s, {frames} frames = {frames / product:.0f} frames/s "
          f"(video {frames / fps:.2f} s long at {fps:.0f} fps)")
    print(f"bare mujoco.Renderer loop over the same {frames} states: {baseline:.2f} s, "
          f"ratio {baseline / product:.2f}")
    print(f"as rendered before (every step at {1 / task.dt:.0f} fps, 4x multisampling): {old:.2f} s")
    print(f"render {steps}-step replay ({spec.width}x{spec.height}, every {spec.stride} step(s) at {fps:.0f} fps, "
          f"{spec.threads} thread(s), MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {product:.2f} s (goal <= 10 s); "
          f"as rendered before {old:.2f} s: {old / product:.1f}x faster")


if __name__ == "__main__":
    main()
