"""Training algorithms as plug-ins. Each module defines a class `Algorithm(tasks, config)` with:

- `prepare_policy(policy)`: the policy this algorithm trains (RECAP adds its indicator input);
- `pretrain(episodes)`: anything fitted once before online training (RECAP's value function);
- `frames(task, source, arrays, max_steps)`: which frames of a demonstration ("offline") or an online episode
  become training data, as (frame index or mask, target actions, per-frame flag), or None;
- `per_sample_loss(policy, batch)`: a loss per sample (the resampler tracks it per task and source);
- `state()` / `load_state(tensors, meta)`: what must survive a learner restart.

Adding an algorithm is one new module and one line here.
"""
from __future__ import annotations

from learner.algorithms import bc, hg_dagger, recap

ALGORITHMS = {"bc": bc.Algorithm, "hg_dagger": hg_dagger.Algorithm, "recap": recap.Algorithm}


def get(name: str):
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None
