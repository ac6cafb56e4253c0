"""Policies (Django-free): a multi-task MLP, observation + task one-hot -> action in [-1, 1].

The interface is small so a larger model could plug in: `select_action(obs, task)`, `loss(batch)`,
and a checkpoint of safetensors weights plus a JSON config. Normalization statistics are buffers, so they travel
with the weights.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from learner.checkpoints import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, checkpoint_sha256  # noqa: F401


@dataclass
class PolicyConfig:
    tasks: list[str]
    """Task names, in the order of the one-hot task embedding."""
    obs_dim: int = 39
    """Observation size (Meta-World: 39)."""
    action_dim: int = 4
    """Action size (Meta-World: 4, in [-1, 1])."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the hidden layers."""
    indicator: bool = False
    """RECAP: the policy also takes an advantage indicator (null / positive / negative) and acts with positive."""
    ensemble: int = 1
    """Members of an ensemble (HG-DAgger's doubt metric): the policy acts with their mean; doubt is the norm of
    their per-dimension variance."""

    def __post_init__(self):
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError("a policy needs a non-empty list of distinct task names")
        if self.obs_dim < 1 or self.action_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError("obs_dim, action_dim and every hidden width must be positive")
        if not 1 <= self.ensemble <= 16:
            raise ValueError("an ensemble has 1 to 16 members")


# RECAP's indicator values, as stored per frame in the buffer's flag column.
INDICATOR_NULL, INDICATOR_POSITIVE, INDICATOR_NEGATIVE = 0, 1, 2


class MLPPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleList([self._member(config) for _ in range(config.ensemble)])
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))
        self._task_index = {name: i for i, name in enumerate(config.tasks)}

    @staticmethod
    def _member(config: PolicyConfig) -> nn.Sequential:
        layers, width = [], config.obs_dim + len(config.tasks) + (3 if config.indicator else 0)
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, config.action_dim))
        return nn.Sequential(*layers)

    guidance = 1.0
    """RECAP at inference (policies with the indicator): beta of classifier-free guidance; 1 acts with the positive
    indicator alone. Not part of the checkpoint: an evaluation or a robot sets it."""

    def set_normalization(self, observations: np.ndarray) -> None:
        self.obs_mean.copy_(torch.as_tensor(observations.mean(axis=0), dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(observations.std(axis=0) + 1e-6, dtype=torch.float32))

    def predictions(self, obs: torch.Tensor, task_ids: torch.Tensor,
                    indicator: torch.Tensor | None = None) -> torch.Tensor:
        """Every member's action, shape (members, batch, action_dim); losses train each member on its own."""
        parts = [(obs - self.obs_mean) / self.obs_std, nn.functional.one_hot(task_ids, len(self.config.tasks))]
        if self.config.indicator:
            if indicator is None:  # acting: the positive-conditioned policy (RECAP with beta = 1)
                indicator = torch.full_like(task_ids, INDICATOR_POSITIVE)
            parts.append(nn.functional.one_hot(indicator.long(), 3))
        features = torch.cat([p.to(obs.dtype) for p in parts], dim=-1)
        return torch.stack([torch.tanh(net(features)) for net in self.nets])

    def forward(self, obs: torch.Tensor, task_ids: torch.Tensor, indicator: torch.Tensor | None = None) -> torch.Tensor:
        """The executed action: the members' mean (the EnsembleDAgger convention)."""
        return self.predictions(obs, task_ids, indicator).mean(dim=0)

    @torch.inference_mode()
    def doubt(self, obs: np.ndarray, task: str) -> float:
        """HG-DAgger's doubt: the norm of the ensemble's per-dimension variance at this observation (0 alone)."""
        if self.config.ensemble == 1:
            return 0.0
        obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
        members = self.predictions(obs_t, torch.tensor([self._task_index[task]]))[:, 0]
        return float(torch.linalg.vector_norm(members.var(dim=0, unbiased=False)))

    def with_indicator(self) -> MLPPolicy:
        """A copy that also takes RECAP's indicator, acting exactly like this policy until trained (the new
        inputs start with zero weights)."""
        config = PolicyConfig(**{**asdict(self.config), "indicator": True})
        conditioned = MLPPolicy(config)
        state = self.state_dict()
        for member in range(config.ensemble):
            first = f"nets.{member}.0.weight"
            weight = torch.zeros_like(conditioned.state_dict()[first])
            weight[:, : state[first].shape[1]] = state[first]
            state[first] = weight
        conditioned.load_state_dict(state)
        return conditioned

    @torch.inference_mode()
    def select_action(self, obs: np.ndarray, task: str) -> np.ndarray:
        if task not in self._task_index:
            raise KeyError(f"this policy was not trained on task {task!r}")
        obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
        ids = torch.tensor([self._task_index[task]])
        if self.config.indicator and self.guidance != 1.0:
            # RECAP's classifier-free guidance: a_null + beta (a_positive - a_null), within the action bounds.
            positive = self.forward(obs_t, ids, torch.full_like(ids, INDICATOR_POSITIVE))
            null = self.forward(obs_t, ids, torch.full_like(ids, INDICATOR_NULL))
            return torch.clamp(null + self.guidance * (positive - null), -1.0, 1.0)[0].numpy()
        return self.forward(obs_t, ids)[0].numpy()


def save_checkpoint(policy: MLPPolicy, directory: Path) -> str:
    """Write weights and config into `directory` (created); returns the checkpoint's sha256."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({"kind": "mlp", **asdict(policy.config)}, indent=2))
    return checkpoint_sha256(directory)


def load_checkpoint(directory: Path, expected_sha256: str | None = None) -> MLPPolicy:
    """Load a policy for inference; refuses a checkpoint whose checksum differs from `expected_sha256`."""
    from safetensors.torch import load as load_weights

    config_bytes = (directory / CONFIG_FILE).read_bytes() if (directory / CONFIG_FILE).exists() else None
    weights_bytes = (directory / WEIGHTS_FILE).read_bytes() if (directory / WEIGHTS_FILE).exists() else None
    if config_bytes is None or weights_bytes is None:
        raise CheckpointError(f"checkpoint {directory} is incomplete")
    if expected_sha256 is not None:
        actual = hashlib.sha256(config_bytes + weights_bytes).hexdigest()
        if actual != expected_sha256:
            raise CheckpointError(f"checkpoint {directory} has sha256 {actual[:12]}…, expected {expected_sha256[:12]}…")
    try:
        raw = json.loads(config_bytes)
        kind = raw.pop("kind")
        if kind != "mlp":
            raise CheckpointError(f"unknown policy kind {kind!r}")
        policy = MLPPolicy(PolicyConfig(**raw))
        policy.load_state_dict(load_weights(weights_bytes))  # the very bytes that were checksummed
    except Exception as exc:  # any malformed content: a clear CheckpointError, never a half-loaded model
        raise CheckpointError(f"checkpoint {directory} cannot be loaded: {exc}") from None
    return policy.eval()

