"""Training algorithms as plug-ins. Each module defines:

- `offline_frames(arrays)` and `online_frames(arrays)`: which frames of a demonstration / an online episode become
  training data, as (frame index or mask, target actions, per-frame flag) or None for none;
- `per_sample_loss(policy, batch)`: a loss per sample (the resampler tracks it per task and source).

Adding an algorithm is one new module and one line here.
"""
from __future__ import annotations

from types import ModuleType

from learner.algorithms import bc, hg_dagger

ALGORITHMS: dict[str, ModuleType] = {"bc": bc, "hg_dagger": hg_dagger}


def get(name: str) -> ModuleType:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None
