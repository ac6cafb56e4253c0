"""RECAP's distributional value function (ALGORITHMS.md §3.1, §4.3), Django-free.

Rewards: -1/T_max per step, 0 at the success step; a failure's return is clipped to -1. Returns lie in [-1, 0]
and are discretised into 201 bins; the network predicts a softmax over the bins, V = sum_b p_b v_b.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

BINS = 201


def returns(arrays: dict, max_steps: int) -> np.ndarray:
    """Monte-Carlo return of every step, normalised into [-1, 0]."""
    steps = len(arrays["obs"])
    if arrays["success"].any():
        end = int(np.argmax(arrays["success"]))  # the success step, whose reward is 0
        remaining = np.clip(end - np.arange(steps), 0, None)
        return -(remaining / max_steps).astype(np.float32)
    return np.full(steps, -1.0, np.float32)  # a failure: the terminal penalty makes every return <= -1


def rewards(arrays: dict, max_steps: int) -> np.ndarray:
    r = np.full(len(arrays["obs"]), -1.0 / max_steps, np.float32)
    r[arrays["success"]] = 0.0
    return r


class DistributionalValue(nn.Module):
    def __init__(self, tasks: list[str], obs_dim: int = 39, hidden: int = 256):
        super().__init__()
        self.tasks = list(tasks)
        self.net = nn.Sequential(nn.Linear(obs_dim + len(tasks), hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, BINS))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("support", torch.linspace(-1.0, 0.0, BINS))

    def logits(self, obs: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(task_ids, len(self.tasks)).to(obs.dtype)
        return self.net(torch.cat([(obs - self.obs_mean) / self.obs_std, one_hot], dim=-1))

    @torch.no_grad()
    def value(self, obs: np.ndarray, task: str) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        ids = torch.full((len(obs_t),), self.tasks.index(task), dtype=torch.long)
        return (self.logits(obs_t, ids).softmax(-1) * self.support).sum(-1).numpy()

    def fit(self, episodes: list[tuple[str, dict, int]], steps: int = 2000, batch_size: int = 256,
            seed: int = 0) -> float:
        """Cross-entropy against the discretised Monte-Carlo returns of (task, arrays, max_steps) episodes."""
        obs = np.concatenate([a["obs"] for _, a, _ in episodes])
        target = np.concatenate([returns(a, m) for _, a, m in episodes])
        ids = np.concatenate([np.full(len(a["obs"]), self.tasks.index(t)) for t, a, _ in episodes])
        self.obs_mean.copy_(torch.as_tensor(obs.mean(0)))
        self.obs_std.copy_(torch.as_tensor(obs.std(0) + 1e-6))
        bins = torch.as_tensor(np.rint((target + 1.0) * (BINS - 1)).astype(np.int64))
        obs_t, ids_t = torch.as_tensor(obs), torch.as_tensor(ids)
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        loss = torch.tensor(0.0)
        for _ in range(steps):
            index = torch.randint(0, len(obs_t), (batch_size,), generator=generator)
            loss = nn.functional.cross_entropy(self.logits(obs_t[index], ids_t[index]), bins[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.eval()
        return float(loss.detach())


def advantages(value: DistributionalValue, task: str, arrays: dict, max_steps: int, lookahead: int) -> np.ndarray:
    """A_t = clip(sum_{k<N} r_{t+k} + V(o_{t+N}), -1, 0) - V(o_t); Monte-Carlo (G_t - V(o_t)) where t+N passes the
    end. The N-step estimate is clipped as the value's targets are (`returns`: a failure's return is -1, not
    -1 - N/T_max): unclipped, every step of a failed episode, whose states V rightly puts at -1, had an advantage
    of about -N/T_max from the step rewards alone, against about 0 along a successful one, so the threshold
    ranked steps by which episode they came from rather than by what they did."""
    v = value.value(arrays["obs"], task)
    r = rewards(arrays, max_steps)
    steps = len(r)
    cumulative = np.concatenate([[0.0], np.cumsum(r)])
    g = returns(arrays, max_steps)
    a = np.empty(steps, np.float32)
    for t in range(steps):
        if t + lookahead < steps:
            a[t] = min(0.0, max(-1.0, cumulative[t + lookahead] - cumulative[t] + v[t + lookahead])) - v[t]
        else:
            a[t] = g[t] - v[t]
    return a
