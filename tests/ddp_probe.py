"""Run by tests/test_distributed.py alone or under torchrun: one learner step after another on a fixed synthetic
buffer (no Django, no database), as one process or as a data-parallel group (learner.distributed). Every rank
writes what it ends with to OUT/rank-N.json: rank 0 the losses of each step, every rank its weights' checksum."""
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
    built = Trainer(policy, LearnerConfig(algorithm="bc", batch_size=batch, seed=seed))
    for steps in (60, 70, 80, 90):
        built.add_episode(TASK, "offline", make_arrays(steps), version=0)
    return built


def checksum(policy) -> float:
    return float(sum(p.double().abs().sum() for p in policy.state_dict().values()))


def main(out: Path, steps: int, batch: int, seed: int = 3) -> None:
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
    if group is not None:
        group.attach(learner)
    losses = [learner.train_step()["loss"] for _ in range(steps)]
    if group is not None:
        group.stop()
    (out / f"rank-{rank}.json").write_text(json.dumps({"losses": losses, "checksum": checksum(learner.policy)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
