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
        self.seen: dict[str, list[float]] = {task: [] for task in self.tasks}
        self.rng = np.random.default_rng(getattr(config, "seed", 0))

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
        return float(np.percentile(self.seen[task], 100 * (1 - self.positive_fraction)))

    def indicators(self, task: str, arrays: dict, max_steps: int, source: str) -> np.ndarray:
        adv = advantages(self.value, task, arrays, max_steps, self.lookahead)
        seen = self.seen[task]
        seen.extend(adv.tolist())
        if len(seen) > RESERVOIR:  # keep a uniform sample of the history, bounded
            self.seen[task] = list(self.rng.choice(seen, RESERVOIR, replace=False))
        flags = np.where(adv > self.threshold(task), INDICATOR_POSITIVE, INDICATOR_NEGATIVE).astype(np.int8)
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
