"""Run by tests/test_distributed.py alone or under torchrun: one learner step after another on a synthetic buffer
(no Django, no database), as one process or as a data-parallel group (learner.distributed). Every rank writes what
it ends with to OUT/rank-N.json: rank 0 the losses of each step, every rank its weights' checksum."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from learner.policy import MLPPolicy, PolicyConfig
from learner.trainer import LearnerConfig, Trainer
from tests.factories import make_arrays

TASK = "pick-place-v3"


def trainer(seed: int, batch: int) -> Trainer:
    torch.manual_seed(seed)
    policy = MLPPolicy(PolicyConfig(tasks=[TASK], hidden=[64, 64]))
    built = Trainer(policy, LearnerConfig(algorithm="hg_dagger", batch_size=batch, seed=seed))
    for number, steps in enumerate((60, 70, 80, 90)):
        built.add_episode(TASK, "offline", make_arrays(steps), version=0, episode_id=number)
    for number, steps in enumerate((55, 65), start=10):  # online: the resampler's share moves with the losses
        built.add_episode(TASK, "online", make_arrays(steps), version=1, episode_id=number)
    return built


def checksum(policy) -> float:
    return float(sum(p.double().abs().sum() for p in policy.state_dict().values()))


def main(out: Path, steps: int, batch: int, seed: int = 3) -> None:
    """`steps` learner steps: a few before the group forms (the sampling RNG and the resampler have moved on when
    the replicas are made), then steps with an episode folded in and one taken out half-way (the replicas' buffers
    follow rank 0's)."""
    torch.set_num_threads(1)
    rank, group = 0, None
    if "RANK" in os.environ:
        from learner import distributed

        group = distributed.init()
        rank = group.rank
        if rank != 0:
            replica = group.follow()
            (out / f"rank-{rank}.json").write_text(json.dumps({"checksum": checksum(replica)}))
            return
    learner = trainer(seed, batch)
    losses = [learner.train_step()["loss"] for _ in range(12)]
    if group is not None:
        group.attach(learner)
        group.idle()
    for step in range(12, steps):
        if step == steps // 2:
            learner.add_episode(TASK, "online", make_arrays(75), version=2, episode_id=20)
            learner.remove_episodes([10])
        losses.append(learner.train_step()["loss"])
    if group is not None:
        group.stop()
    (out / f"rank-{rank}.json").write_text(json.dumps({"losses": losses, "checksum": checksum(learner.policy)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
