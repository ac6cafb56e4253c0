"""Replay: an episode's video, rendered offscreen from its recorded simulator state and encoded for browsers.

Each recorded step's qpos, qvel and mocap pose are put back into the task's scene (mj_forward, no stepping), so
the video shows exactly what the robot did, whatever the policy was. Before anything is drawn the episode is
checked against the task: the task's reset at the episode's seed must give its first observation, and every
restored state must give back the observation recorded with it — an episode of another task or a corrupt
payload is refused with a message that says which, never rendered as a plausible but wrong video.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fleet.sim.envs import SimTask

# The first 18 observation dimensions are the hand, gripper and object poses, all computed from the simulator
# state (the rest are the previous step's copy and the goal): what a restored state must reproduce.
STATE_OBS_DIMS = 18
TOLERANCE = 1e-4


class ReplayError(ValueError):
    """The episode cannot be replayed, with the reason in words; nothing was written."""


@dataclass(frozen=True)
class VideoSpec:
    width: int = 320
    """Pixels; a multiple of 16 (H.264 macroblocks)."""
    height: int = 240
    """Pixels; a multiple of 16."""
    camera: str = "corner"
    """A camera of the Meta-World scene: corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV."""
    threads: int = 1
    """CPU threads of the software rasteriser (OSMesa's llvmpipe) and of the x264 encoder: rendering is bulk work
    beside robots and the learner, so it takes one core's worth unless told otherwise."""
    stride: int = 2
    """Control steps per video frame: 2 draws every second step, a 40 fps video at the robot's 80 Hz, which plays
    at the robot's own pace (fps = 1 / (dt * stride)). Every step is still checked against its observation."""
    antialias: bool = False
    """4x multisampling: llvmpipe spends about three times as long on a multisampled frame, for smoother edges
    that show an annotator nothing more."""

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError(f"render threads {self.threads}: at least 1")
        if not 1 <= self.stride <= 8:
            raise ValueError(f"frame stride {self.stride}: draw one frame every 1 to 8 control steps")
        if self.width % 16 or self.height % 16 or not 16 <= self.width <= 1920 or not 16 <= self.height <= 1088:
            raise ValueError(f"video size {self.width}x{self.height}: use multiples of 16 up to 1920x1088")


def check_episode(task: SimTask, seed: int, arrays: dict) -> None:
    """Raise ReplayError unless `arrays` were recorded on `task`'s scene from a reset at `seed`."""
    model = task.env.model
    qpos, qvel = arrays["qpos"], arrays["qvel"]
    if qpos.shape[1] != model.nq or qvel.shape[1] != model.nv:
        raise ReplayError(
            f"the recorded simulator state has {qpos.shape[1]} positions and {qvel.shape[1]} velocities, but the "
            f"{task.name} scene has {model.nq} and {model.nv}: the episode was recorded on another task")
    first = task.reset(seed)  # also places this seed's object and goal, which the video shows
    gap = float(np.abs(first - arrays["obs"][0]).max())
    if gap > TOLERANCE:
        raise ReplayError(
            f"the episode's first observation differs by {gap:.3g} from {task.name} reset at seed {seed}: "
            "it was recorded on another task (or with another seed)")


def _restore_checked(task: SimTask, arrays: dict, t: int) -> None:
    task.restore(arrays["qpos"][t], arrays["qvel"][t], arrays["mocap_pos"][t], arrays["mocap_quat"][t])
    observed = task.env._get_curr_obs_combined_no_goal()[:STATE_OBS_DIMS]
    gap = float(np.abs(observed - arrays["obs"][t][:STATE_OBS_DIMS]).max())
    if gap > TOLERANCE:
        raise ReplayError(
            f"step {t}: the recorded simulator state does not reproduce the observation recorded with it "
            f"(off by {gap:.3g}): the episode payload is corrupt")


class FrameRenderer:
    """An offscreen MuJoCo renderer for one task's scene (EGL or OSMesa, per MUJOCO_GL)."""

    def __init__(self, task: SimTask, spec: VideoSpec):
        import mujoco

        if mujoco.GLContext.__module__.startswith("mujoco.glfw") and not os.environ.get("DISPLAY"):
            raise RuntimeError("MuJoCo was imported before fleet.sim chose an offscreen OpenGL backend and has no "
                               "display: set MUJOCO_GL=osmesa (or egl on a GPU host) for this process")
        model = task.env.model
        cameras = [model.camera(i).name for i in range(model.ncam)]
        if spec.camera not in cameras:
            raise ValueError(f"camera {spec.camera!r} is not in the {task.name} scene: {', '.join(cameras)}")
        # The offscreen buffer must hold the frame; Meta-World's model asks for 640x480.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, spec.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, spec.height)
        # Read when the context (and its multisampled buffer) is made; Meta-World's model asks for 4 samples.
        model.vis.quality.offsamples = 4 if spec.antialias else 0
        self.task, self.spec = task, spec
        # llvmpipe reads its thread count (one per core otherwise) when OSMesa creates its screen, once per process:
        # so the first renderer's spec decides, which is the worker's setting.
        os.environ["LP_NUM_THREADS"] = str(spec.threads)
        self.renderer = mujoco.Renderer(model, spec.height, spec.width)
        self._flags = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION)

    def render(self) -> np.ndarray:
        """The current scene as (height, width, 3) uint8, upright."""
        self.renderer.update_scene(self.task.env.data, camera=self.spec.camera)
        # Shadows and reflections cost three quarters of a software-rendered frame and show nothing an
        # annotator needs.
        for flag in self._flags:
            self.renderer.scene.flags[flag] = False
        # Meta-World's cameras are mounted upside down.
        return np.ascontiguousarray(self.renderer.render()[::-1])

    def close(self) -> None:
        self.renderer.close()


def frame_steps(steps: int, stride: int) -> range:
    """The steps a video of a `steps`-long episode draws: frame k shows step k * stride, for k * stride < steps."""
    return range(0, steps, stride)


def render_video(task: SimTask, seed: int, arrays: dict, path: Path, spec: VideoSpec = VideoSpec(),
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Render every `spec.stride`-th recorded step into an H.264 mp4 (yuv420p, moov atom first, so browsers can
    seek before it has all arrived) that plays at the robot's pace, written atomically to `path`. Frame k shows
    step k * stride from time k / fps: a player maps its time t to step stride * floor(t * fps).

    Every step is restored and checked, drawn or not. `progress(done, total)` is called as steps are done.
    Returns the video's facts (fps, stride, frames, size).
    """
    import imageio_ffmpeg  # ships its own ffmpeg binary: nothing is downloaded at run time

    check_episode(task, seed, arrays)
    steps = len(arrays["obs"])
    fps = 1.0 / (task.dt * spec.stride)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    frames = FrameRenderer(task, spec)
    started = time.perf_counter()
    # ffmpeg is its own process: it encodes one frame while this one draws the next.
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (spec.width, spec.height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        output_params=["-preset", "veryfast", "-crf", "23", "-movflags", "+faststart",
                       "-threads", str(spec.threads)],
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        for t in range(steps):
            _restore_checked(task, arrays, t)
            if t % spec.stride == 0:
                writer.send(frames.render())
            if progress is not None:
                progress(t + 1, steps)
        writer.close()
        tmp.replace(path)
    finally:
        writer.close()
        frames.close()
        tmp.unlink(missing_ok=True)
    return {"fps": fps, "stride": spec.stride, "frames": len(frame_steps(steps, spec.stride)),
            "width": spec.width, "height": spec.height, "camera": spec.camera, "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 3)}
