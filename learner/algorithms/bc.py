"""Behaviour cloning: regress the policy's action onto a target action. Offline, the expert's actions in the
demonstrations; online, what the fleet did in its successful episodes (filtered BC)."""
from __future__ import annotations

import torch


def batch_loss(policy, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean squared error on a batch (used by base-policy pretraining)."""
    loss = ((policy(batch["obs"], batch["task"]) - batch["target"]) ** 2).mean()
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
        return ((policy(batch["obs"], batch["task"]) - batch["target"]) ** 2).mean(dim=-1)

    def state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass
