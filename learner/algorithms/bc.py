"""Behaviour cloning: regress the policy's action onto a target action. Offline, the expert's actions in the
demonstrations; online, what the fleet did in its successful episodes (filtered BC)."""
from __future__ import annotations

import torch


def squared_error(policy, batch: dict, indicator=None) -> torch.Tensor:
    """Per-sample squared error, averaged over action dimensions and ensemble members (each member is fitted on
    its own, which keeps an ensemble diverse enough to measure doubt)."""
    predictions = policy.predictions(batch["obs"], batch["task"], indicator)
    return ((predictions - batch["target"]) ** 2).mean(dim=-1).mean(dim=0)


def batch_loss(policy, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean squared error on a batch (used by base-policy pretraining)."""
    loss = squared_error(policy, batch).mean()
    return loss, {"loss": float(loss.detach())}


class Algorithm:
    needs_pretraining = False  # whether `pretrain` wants every episode so far before online training

    def __init__(self, tasks: list[str], config=None):
        self.tasks, self.config = list(tasks), config

    def prepare_policy(self, policy):
        return policy

    def pretrain(self, episodes: list) -> None:
        pass

    def frames(self, task: str, source: str, arrays: dict, max_steps: int):
        if source == "offline":
            return slice(None), arrays["expert_action"], 0
        if not arrays["success"].any():
            return None
        return slice(None), arrays["action"], 0

    def per_sample_loss(self, policy, batch: dict) -> torch.Tensor:
        return squared_error(policy, batch)

    def task_stats(self) -> dict[str, dict]:
        """Per task, what this algorithm adds to each training metric (TrainingMetric.tasks)."""
        return {}

    def state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass
