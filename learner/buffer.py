"""The learner's experience buffer and the SOP resampler (ALGORITHMS.md §1.2, §4.4). Django-free.

Frames are kept by task and by source ("offline": demonstrations, "online": what the algorithm takes from
online episodes), in growable arrays, so folding in a new episode is an append, never a reload.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

SOURCES = ("offline", "online")


COLUMNS = ("obs", "target", "version", "flag", "intervention")  # what a sample carries
STORED = COLUMNS + ("episode",)


class _Frames:
    """Growable columns: obs (N, 39) float32, target (N, 4) float32, the version that produced the frame (N,)
    int32, an algorithm's per-frame label (N,) int8 (RECAP's indicator), whether an expert acted (N,) bool, and
    the episode the frame came from (N,) int64 (-1: none), so a label can take an episode's frames out again."""

    def __init__(self, obs_dim: int, action_dim: int):
        self.size = 0
        self.obs = np.zeros((1024, obs_dim), np.float32)
        self.target = np.zeros((1024, action_dim), np.float32)
        self.version = np.zeros(1024, np.int32)
        self.flag = np.zeros(1024, np.int8)
        self.intervention = np.zeros(1024, bool)
        self.episode = np.full(1024, -1, np.int64)

    def append(self, obs, target, version: int, flag, intervention, episode: int = -1) -> None:
        n = len(obs)
        if self.size + n > len(self.obs):
            capacity = max(len(self.obs) * 2, self.size + n)
            for name in STORED:
                old = getattr(self, name)
                grown = np.zeros((capacity, *old.shape[1:]), old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        end = self.size + n
        self.obs[self.size:end], self.target[self.size:end] = obs, target
        self.version[self.size:end], self.flag[self.size:end] = version, flag
        self.intervention[self.size:end] = intervention
        self.episode[self.size:end] = episode
        self.size = end

    def remove(self, episodes: np.ndarray) -> int:
        """Drop the frames of these episodes, keeping the others in order (one pass; labels are rare)."""
        keep = ~np.isin(self.episode[: self.size], episodes)
        removed = self.size - int(keep.sum())
        if removed:
            for name in STORED:
                column = getattr(self, name)
                column[: self.size - removed] = column[: self.size][keep]
            self.size -= removed
        return removed


class ExperienceBuffer:
    def __init__(self, tasks: list[str], obs_dim: int = 39, action_dim: int = 4):
        self.tasks = list(tasks)
        self._frames = {(t, s): _Frames(obs_dim, action_dim) for t in self.tasks for s in SOURCES}

    def add(self, task: str, source: str, obs, target, version: int = 0, flag=0, intervention=False,
            episode: int = -1) -> None:
        if len(obs) == 0:
            return
        self._frames[(task, source)].append(obs, target, version, flag, intervention, episode)

    def remove_episodes(self, episodes) -> int:
        """Take every frame of these episode ids out of the buffer; returns how many frames left."""
        ids = np.asarray(sorted(episodes), np.int64)
        if ids.size == 0:
            return 0
        return sum(frames.remove(ids) for frames in self._frames.values())

    def size(self, task: str, source: str) -> int:
        return self._frames[(task, source)].size

    def sizes(self) -> dict:
        return {t: {s: self.size(t, s) for s in SOURCES} for t in self.tasks}

    def sample(self, task: str, source: str, count: int, rng: np.random.Generator) -> dict:
        return self.rows(task, source, self.draw(task, source, count, rng))

    def draw(self, task: str, source: str, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` frame indices of (task, source), uniformly with replacement."""
        return rng.integers(0, self._frames[(task, source)].size, size=count)

    def rows(self, task: str, source: str, index: np.ndarray, columns=COLUMNS) -> dict:
        frames = self._frames[(task, source)]
        return {name: getattr(frames, name)[index] for name in columns}

    def contents(self) -> dict:
        """Every stored frame, by (task, source) and column (a data-parallel replica is built from it)."""
        return {key: {name: getattr(frames, name)[: frames.size].copy() for name in STORED}
                for key, frames in self._frames.items() if frames.size}

    def load_contents(self, contents: dict) -> None:
        for (task, source), columns in contents.items():
            self.add(task, source, columns["obs"], columns["target"], columns["version"], columns["flag"],
                     columns["intervention"], columns["episode"])


class Resampler:
    """Tasks uniform; within a task the online share follows the online/offline loss ratio (SOP Eq. 3):
    w_on = exp(alpha * l_on) / (exp(alpha * l_on) + exp(l_off)), over a window of learner steps, clipped.

    `scale="raw"` feeds the mean losses in as they are (the seed's formula). Behaviour-cloning losses of 0.01-0.1
    leave exp() nearly flat there, so w_on stays at 0.50-0.53 whatever the ratio. `scale="normalised"` divides both
    by their average first (l / ((l_on + l_off) / 2)): the same formula then answers to the ratio alone, e.g. an
    online loss twice the offline one gives 0.79 with alpha 1.5, equal losses 0.62, half 0.42."""

    def __init__(self, tasks: list[str], alpha: float = 1.5, window: int = 200, clip: tuple = (0.2, 0.8),
                 min_history: int = 10, fixed_share: float | None = None, scale: str = "raw"):
        if fixed_share is not None and not 0.0 <= fixed_share <= 1.0:
            raise ValueError("a fixed online share must lie in [0, 1]")
        if scale not in ("raw", "normalised"):
            raise ValueError(f"the resampler's scale is raw or normalised, not {scale!r}")
        self.tasks, self.alpha, self.window, self.clip, self.scale = list(tasks), alpha, window, clip, scale
        self.min_history, self.fixed_share = min_history, fixed_share
        self.share = {t: 0.5 if fixed_share is None else fixed_share for t in self.tasks}
        self.history = {t: {s: deque(maxlen=window) for s in SOURCES} for t in self.tasks}
        self._sums = {t: {s: 0.0 for s in SOURCES} for t in self.tasks}  # running window sums: update() is per step

    def plan(self, batch_size: int, buffer: ExperienceBuffer, rng: np.random.Generator) -> dict:
        """How many samples to draw from each (task, source) for one batch (vectorised: this runs every step)."""
        usable = [t for t in self.tasks if buffer.size(t, "offline") or buffer.size(t, "online")]
        if not usable:
            return {}
        picks = np.bincount(rng.integers(0, len(usable), size=batch_size), minlength=len(usable))
        counts: dict = {}
        for task, count in zip(usable, picks):
            if not count:
                continue
            has_on, has_off = buffer.size(task, "online") > 0, buffer.size(task, "offline") > 0
            share = 1.0 if not has_off else (self.share[task] if has_on else 0.0)
            online = int(rng.binomial(count, share))
            for source, n in (("online", online), ("offline", count - online)):
                if n:
                    counts[(task, source)] = int(n)
        return counts

    def record(self, task: str, source: str, loss: float) -> None:
        history = self.history[task][source]
        if len(history) == history.maxlen:
            self._sums[task][source] -= history[0]
        history.append(float(loss))
        self._sums[task][source] += float(loss)

    def _mean(self, task: str, source: str) -> float | None:
        history = self.history[task][source]
        return self._sums[task][source] / len(history) if history else None

    def update(self) -> None:
        if self.fixed_share is not None:
            return
        low, high = self.clip
        for task in self.tasks:
            on, off = self.history[task]["online"], self.history[task]["offline"]
            if len(on) >= self.min_history and len(off) >= self.min_history:
                l_on, l_off = self._mean(task, "online"), self._mean(task, "offline")
                if self.scale == "normalised" and l_on + l_off > 0:
                    average = (l_on + l_off) / 2
                    l_on, l_off = l_on / average, l_off / average
                share = online_share(l_on, l_off, self.alpha)
                self.share[task] = min(high, max(low, share))

    def stats(self) -> dict:
        return {t: {"w_on": self.share[t], "l_on": self._mean(t, "online"), "l_off": self._mean(t, "offline")}
                for t in self.tasks}

    def state_dict(self) -> dict:
        history = {task: {source: list(losses) for source, losses in by_source.items()}
                   for task, by_source in self.history.items()}
        return {"share": self.share, "history": history}

    def load_state_dict(self, state: dict) -> None:
        self.share.update(state["share"])
        for task, sources in state["history"].items():
            if task in self.history:
                for source, values in sources.items():
                    for value in values:
                        self.record(task, source, value)


def online_share(l_on: float, l_off: float, alpha: float) -> float:
    """exp(alpha*l_on) / (exp(alpha*l_on) + exp(l_off)), computed stably."""
    a, b = alpha * l_on, l_off
    return 1.0 / (1.0 + math.exp(b - a))
