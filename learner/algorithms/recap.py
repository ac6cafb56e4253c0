"""RECAP as SOP runs it (ALGORITHMS.md §3, §4.3): a distributional value function fitted once on the
demonstrations and the base policy's rollouts, then frozen; N-step advantages computed as episodes arrive; a
per-task percentile threshold turns them into a positive / negative indicator (expert frames forced positive);
the policy learns action | observation, task, indicator with the indicator dropped 30 % of the time, and acts
with the positive indicator."""
from __future__ import annotations

import numpy as np
import torch

from learner.algorithms import bc
from learner.policy import INDICATOR_NEGATIVE, INDICATOR_NULL, INDICATOR_POSITIVE
from learner.value import DistributionalValue, advantages

RESERVOIR = 20_000  # advantages kept per task for the percentile threshold


class Reservoir:
    """A uniform sample of at most `size` of all the values offered (Vitter's algorithm R): after n values, each is
    held with probability size / n, however long ago it came. (Subsampling the sample whenever it overflowed, as
    before, kept recent values more often than old ones.)"""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.offered = size, rng, 0
        self.values = np.empty(size, np.float32)

    def extend(self, new: np.ndarray) -> None:
        new = np.asarray(new, np.float32)
        room = max(0, min(len(new), self.size - self.offered))
        self.values[self.offered:self.offered + room] = new[:room]
        rest = new[room:]
        if len(rest):
            # Value number i (0-based, over everything offered) replaces slot j ~ U{0..i} when j < size; numpy's
            # assignment keeps the last of repeated slots, as doing it one value at a time would.
            numbers = self.offered + room + np.arange(len(rest))
            slots = (self.rng.random(len(rest)) * (numbers + 1)).astype(np.int64)
            kept = slots < self.size
            self.values[slots[kept]] = rest[kept]
        self.offered += len(new)

    def sample(self) -> np.ndarray:
        return self.values[:min(self.offered, self.size)]


class Algorithm(bc.Algorithm):
    needs_pretraining = True

    def __init__(self, tasks: list[str], config=None):
        super().__init__(tasks, config)
        self.lookahead = getattr(config, "recap_lookahead", 15)
        self.positive_fraction = getattr(config, "recap_positive_fraction", 0.3)
        self.dropout = getattr(config, "recap_indicator_dropout", 0.3)
        self.value_steps = getattr(config, "recap_value_steps", 2000)
        self.value = DistributionalValue(self.tasks)
        self.fitted = False
        self.rng = np.random.default_rng(getattr(config, "seed", 0))
        self.seen = {task: Reservoir(RESERVOIR, self.rng) for task in self.tasks}
        # Online frames whose advantage cleared the threshold, before interventions are forced positive: the
        # share the percentile aims at (positive_fraction), as realised (logged per task with each metric).
        self.online_frames = {task: 0 for task in self.tasks}
        self.online_positive = {task: 0 for task in self.tasks}

    def prepare_policy(self, policy):
        return policy if policy.config.indicator else policy.with_indicator()

    def pretrain(self, episodes: list) -> None:
        """episodes: (task, source, arrays, max_steps) — demonstrations and the base policy's rollouts."""
        usable = [(t, a, m) for t, _, a, m in episodes if t in self.tasks]
        if usable:
            self.value.fit(usable, steps=self.value_steps)
            self.fitted = True
        for parameter in self.value.parameters():
            parameter.requires_grad_(False)  # frozen from here on

    def threshold(self, task: str) -> float:
        """The (1 - positive_fraction) percentile of the advantages seen for this task."""
        return float(np.percentile(self.seen[task].sample(), 100 * (1 - self.positive_fraction)))

    def indicators(self, task: str, arrays: dict, max_steps: int, source: str) -> np.ndarray:
        adv = advantages(self.value, task, arrays, max_steps, self.lookahead)
        self.seen[task].extend(adv)
        positive = adv > self.threshold(task)
        if source == "online":
            self.online_frames[task] += len(adv)
            self.online_positive[task] += int(positive.sum())
        flags = np.where(positive, INDICATOR_POSITIVE, INDICATOR_NEGATIVE).astype(np.int8)
        # Human (expert) corrections are always positive; so are demonstrations, which are all expert frames.
        flags[arrays["intervention"]] = INDICATOR_POSITIVE
        if source == "offline":
            flags[:] = INDICATOR_POSITIVE
        return flags

    def frames(self, task: str, source: str, arrays: dict, max_steps: int):
        target = arrays["expert_action"] if source == "offline" else arrays["action"]
        return slice(None), target, self.indicators(task, arrays, max_steps, source)

    def per_sample_loss(self, policy, batch: dict) -> torch.Tensor:
        indicator = batch["flag"].long()
        dropped = torch.rand(indicator.shape, device=indicator.device) < self.dropout
        indicator = torch.where(dropped, torch.full_like(indicator, INDICATOR_NULL), indicator)
        return bc.squared_error(policy, batch, indicator)

    def task_stats(self) -> dict[str, dict]:
        return {task: {"positive_share": self.online_positive[task] / frames}
                for task, frames in self.online_frames.items() if frames}

    def state(self) -> tuple[dict, dict]:
        tensors = {f"value/{k}": v.detach().cpu().contiguous() for k, v in self.value.state_dict().items()}
        # The advantages behind the thresholds are not saved: rebuilding the buffer on resume recomputes them.
        return tensors, {"fitted": self.fitted}

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.value.load_state_dict({k.removeprefix("value/"): v for k, v in tensors.items() if k.startswith("value/")})
        for parameter in self.value.parameters():
            parameter.requires_grad_(False)
        self.value.eval()
        self.fitted = meta.get("fitted", False)
