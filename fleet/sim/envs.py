"""Meta-World v3 environments with seeded resets, their scripted experts, and simulator snapshots for replay."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

# The scripted experts warn on every call that their gains exceed the action bounds; the env clips, as we do.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

OBS_DIM = 39
ACTION_DIM = 4
CONTROL_DT = 0.0125  # seconds per control step of every Meta-World v3 task (frame_skip 5 x timestep 0.0025)

# Seed ranges keep the data sets apart: evaluation episodes use held-out seeds that training never sees, and the
# learner's held-out evaluation (learner.evaluation, the experiments' metric) never shares a seed with the
# evaluations governance runs to decide rollouts, so a version is not chosen on the seeds it is then reported on.
EVALUATION_SEED_BASE = 0  # governance's evaluation seed i of a task is EVALUATION_SEED_BASE + i
HELD_OUT_SEED_BASE = 500_000  # the learner's held-out evaluation: seed i is HELD_OUT_SEED_BASE + i
DEMO_SEED_BASE = 1_000_000  # offline demonstrations (generate_demos tries seeds upwards from here)
ONLINE_SEED_BASE = 1 << 30  # online episodes draw from [2^30, 2^31)
# Each range and what draws from it (tests/test_evaluation.py checks that they are disjoint and respected).
SEED_RANGES = {
    "governance evaluation": range(EVALUATION_SEED_BASE, HELD_OUT_SEED_BASE),
    "held-out evaluation": range(HELD_OUT_SEED_BASE, DEMO_SEED_BASE),
    "demonstrations": range(DEMO_SEED_BASE, ONLINE_SEED_BASE),
    "online": range(ONLINE_SEED_BASE, 1 << 31),
}


def online_seed() -> int:
    import secrets

    return ONLINE_SEED_BASE + secrets.randbits(30)


class UnknownTask(ValueError):
    pass


def expert_class_name(env_name: str) -> str:
    """`peg-insert-side-v3` -> `SawyerPegInsertionSideV3Policy`, following metaworld.policies' naming."""
    special = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}
    if env_name in special:
        return special[env_name]
    stem = re.sub(r"-v3$", "", env_name)
    return "Sawyer" + "".join(part.capitalize() for part in stem.split("-")) + "V3Policy"


@dataclass
class SimTask:
    """One Meta-World task: a seeded environment and the scripted expert that stands in for the human."""

    name: str
    env: object
    expert: object
    scene_shift: tuple[float, float] | None = None  # metres (shift_scene); None: the training scenes

    @property
    def dt(self) -> float:
        """Seconds of robot time per control step (80 Hz for Meta-World)."""
        return float(self.env.dt)

    @property
    def max_steps(self) -> int:
        return int(self.env.max_path_length)

    def reset(self, seed: int) -> np.ndarray:
        """The same seed gives the same initial object and goal positions, on any machine and any instance."""
        self.env.seed(int(seed))
        obs, _ = self.env.reset()
        return obs

    def step(self, action: np.ndarray):
        obs, reward, _terminated, _truncated, info = self.env.step(action)
        return obs, float(reward), info

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.expert.get_action(obs), dtype=np.float32)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """qpos, qvel, mocap position and quaternion: what replay needs to put the scene back (episodes keep them
        as float32, a fraction of a micrometre off)."""
        data = self.env.data
        return data.qpos.copy(), data.qvel.copy(), data.mocap_pos[0].copy(), data.mocap_quat[0].copy()

    def restore(self, qpos, qvel, mocap_pos, mocap_quat) -> None:
        import mujoco

        data = self.env.data
        data.qpos[:], data.qvel[:] = qpos, qvel
        data.mocap_pos[0], data.mocap_quat[0] = mocap_pos, mocap_quat
        mujoco.mj_forward(self.env.model, data)


def load_metaworld():
    """Meta-World's goal-observable environments by name and its module of scripted experts. The first call imports
    them: about a second of CPU in a fresh process (actors pay it before they take a robot's lease)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's checker complains about Meta-World's obs bounds
        import metaworld.policies
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, metaworld.policies


def make_task(env_name: str, render_mode: str | None = None,
              scene_shift: tuple[float, float] | None = None) -> SimTask:
    """Build the environment for a Meta-World v3 task name (e.g. `pick-place-v3`); `scene_shift` moves its object
    and goal ranges (shift_scene)."""
    environments, experts = load_metaworld()
    try:
        env_cls = environments[f"{env_name}-goal-observable"]
    except KeyError:
        raise UnknownTask(f"{env_name!r} is not a Meta-World v3 task") from None
    try:
        expert = getattr(experts, expert_class_name(env_name))()
    except AttributeError:
        raise UnknownTask(f"{env_name!r} has no scripted expert in metaworld.policies") from None
    env = env_cls(seed=0, render_mode=render_mode)
    # Sample the object and goal positions from the env's own seeded RNG at every reset.
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    task = SimTask(name=env_name, env=env, expert=expert)
    if scene_shift:
        shift_scene(task, *scene_shift)
    return task


def shift_scene(task: SimTask, dx: float, dy: float) -> None:
    """A deployment site unlike the training one: every object and goal position the task samples (its random
    reset space, one x, y, z triple per object or goal) moves by (dx, dy) metres on the table. The task, its
    scripted expert and its success test are unchanged; the same seed gives the same layout, shifted."""
    from gymnasium.spaces import Box

    space = task.env._random_reset_space
    if space.shape[0] % 3:
        raise ValueError(f"{task.name}: its reset space is not made of x, y, z triples")
    offset = np.zeros(space.shape, dtype=space.low.dtype)
    offset[0::3], offset[1::3] = dx, dy
    task.env._random_reset_space = Box(space.low + offset, space.high + offset, dtype=space.low.dtype)
    task.scene_shift = (float(dx), float(dy))
