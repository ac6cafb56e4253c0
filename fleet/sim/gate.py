"""The scripted "human" of HG-DAgger (ALGORITHMS.md §2, §4.2): it takes full control when the state looks about
to fail and hands back once it has held control long enough and progress resumes."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Who acted at a step, as stored per step in an episode's `intervention_source` array.
POLICY, GATE, OPERATOR, ANNOTATOR = 0, 1, 2, 3
SOURCE_NAMES = {GATE: "gate", OPERATOR: "operator", ANNOTATOR: "annotator"}


@dataclass(frozen=True)
class GateConfig:
    """Parameters of the expert gate; logged with every episode."""

    enabled: bool = True
    """Off: the policy runs alone (evaluation, or a fleet without an expert); operator takeovers still work."""
    no_progress_steps: int = 15
    """m: take over when the progress measure has not improved for this many steps."""
    divergence: float = 1.0
    """delta: a step is 'diverging' when ||a_policy - a_expert||_2 exceeds this."""
    divergence_steps: int = 3
    """k: take over after this many diverging steps in a row."""
    min_hold_steps: int = 20
    """H_min: the expert keeps control at least this long before it may hand back."""
    progress_epsilon: float = 1e-3
    """How much the progress measure (the task's shaped reward) must rise to count as progress."""

    def __post_init__(self):
        for name in ("no_progress_steps", "divergence_steps", "min_hold_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"gate {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("divergence", "progress_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"gate {name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> GateConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def as_dict(self) -> dict:
        return asdict(self)


class Gate:
    """Decides, step by step, who controls the robot: the policy, the expert (gate) or the expert for an operator."""

    def __init__(self, config: GateConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.best_progress = -math.inf
        self.steps_without_progress = 0
        self.diverging_steps = 0
        self.in_control = False
        self.held_steps = 0
        self.operator = False
        self.takeovers = 0

    def operator_takeover(self) -> None:
        """An operator asked for this robot: the expert keeps control for the rest of the episode."""
        self.operator = True

    def decide(self, progress: float, policy_action: np.ndarray, expert_action: np.ndarray) -> int:
        """Who acts at this step: POLICY, GATE or OPERATOR."""
        if self.operator:
            return OPERATOR
        cfg = self.config
        improved = progress > self.best_progress + cfg.progress_epsilon
        if improved:
            self.best_progress = progress
            self.steps_without_progress = 0
        else:
            self.steps_without_progress += 1

        if self.in_control:
            self.held_steps += 1
            if self.held_steps >= cfg.min_hold_steps and improved:
                self.in_control = False  # hand back: the policy acts from this step on
                self.diverging_steps = 0
                return POLICY
            return GATE

        if not cfg.enabled:
            return POLICY
        gap = float(np.linalg.norm(np.asarray(policy_action) - np.asarray(expert_action)))
        self.diverging_steps = self.diverging_steps + 1 if gap > cfg.divergence else 0
        if self.steps_without_progress >= cfg.no_progress_steps or self.diverging_steps >= cfg.divergence_steps:
            self.in_control = True
            self.held_steps = 0
            self.takeovers += 1
            self.steps_without_progress = 0
            self.diverging_steps = 0
            return GATE
        return POLICY
