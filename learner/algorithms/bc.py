"""Behaviour cloning: regress the policy's action onto the expert's action."""
from __future__ import annotations

import torch


def batch_loss(policy, batch: dict) -> tuple[torch.Tensor, dict]:
    predicted = policy(batch["obs"], batch["task"])
    loss = torch.nn.functional.mse_loss(predicted, batch["target"])
    return loss, {"loss": float(loss.detach())}
