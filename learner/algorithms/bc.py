"""Behaviour cloning: regress the policy's action onto a target action. Online, it clones what the fleet did in
its successful episodes (filtered BC); offline, the expert's actions in the demonstrations."""
from __future__ import annotations

import torch


def offline_frames(arrays: dict):
    return slice(None), arrays["expert_action"], 0


def online_frames(arrays: dict):
    if not arrays["success"].any():
        return None
    return slice(None), arrays["action"], 0


def per_sample_loss(policy, batch: dict) -> torch.Tensor:
    predicted = policy(batch["obs"], batch["task"])
    return ((predicted - batch["target"]) ** 2).mean(dim=-1)


def batch_loss(policy, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = per_sample_loss(policy, batch).mean()
    return loss, {"loss": float(loss.detach())}
