"""The data-parallel learner: LEARNER_WORLD_SIZE processes under `torchrun`, a long-running service in place of the
Celery slices (`python -m learner.service` starts it; the Procfile's `learner` entry runs that).

Rank 0 is the learner as before (learner.loop: the lease, folding episodes into the one buffer, the resampler,
publishing versions, saving resumable state), looping over slices itself instead of queueing them. Every gradient
step it samples the global batch (LEARNER_BATCH_SIZE, the same draw one process would make), hands each rank its
share, and every rank, rank 0 included, runs forward and backward on its share through DistributedDataParallel,
which all-reduces (averages) the gradients: the mean of the shares' mean losses is the global batch's mean loss,
so the step equals the single-process step on the same batch. Each rank then takes the same Adam step on the same
averaged gradient and its replica stays identical. The per-sample losses come back to rank 0 for the resampler.

Only rank 0 reads PostgreSQL; the others hold a replica (policy, algorithm, optimizer) sent by rank 0 whenever it
builds a trainer (a new run, or a resume from saved state). NCCL on GPUs, gloo on CPU. A rank that dies ends the
group (torchrun stops the others); started again, rank 0 resumes from the saved state like any learner.
"""
from __future__ import annotations

import gc
import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

STOP, STEP, SYNC = 0, 1, 2


class LossModule(nn.Module):
    """The algorithm's per-sample loss as a module, so DDP sees the policy's parameters go through forward()."""

    def __init__(self, policy: nn.Module, algorithm):
        super().__init__()
        self.policy, self.algorithm = policy, algorithm

    def forward(self, obs, target, task, flag):
        return self.algorithm.per_sample_loss(self.policy, {"obs": obs, "target": target, "task": task,
                                                            "flag": flag})


class Group:
    """This process's place in the group. Rank 0 drives (`attach`, `step`, `stop`); the others `follow`."""

    def __init__(self):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    # --- both sides ---------------------------------------------------------------------------------------

    def _command(self, command: int = 0, rows: int = 0) -> tuple[int, int]:
        """Rank 0 says what comes next (and for a step, each rank's rows); the others hear it."""
        value = torch.tensor([command, rows], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return int(value[0]), int(value[1])

    def _wrap(self, policy: nn.Module, algorithm) -> None:
        # Constructing DDP broadcasts rank 0's parameters and buffers: every replica starts identical. The buffers
        # (the observation normaliser) never change afterwards, so they are not sent again at every forward.
        module = LossModule(policy.to(self.device), algorithm)
        self.ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None, forward_sync_buffers=False)
        self.obs_dim, self.action_dim = policy.config.obs_dim, policy.config.action_dim

    def _shard_step(self, shard: torch.Tensor, optimizer) -> torch.Tensor:
        """Forward and backward on this rank's rows (obs, target, task, flag packed as float32 columns)."""
        obs, target = shard[:, :self.obs_dim], shard[:, self.obs_dim:self.obs_dim + self.action_dim]
        task, flag = shard[:, -2].long(), shard[:, -1].long()
        per_sample = self.ddp(obs, target, task, flag)
        optimizer.zero_grad(set_to_none=True)
        per_sample.mean().backward()  # DDP averages the gradients across ranks here
        optimizer.step()
        return per_sample.detach()

    # --- rank 0 -------------------------------------------------------------------------------------------

    def attach(self, trainer) -> None:
        """Give every rank a replica of `trainer`'s policy, algorithm and optimizer (a new or resumed trainer)."""
        from dataclasses import asdict

        self._command(SYNC)
        replica = {"policy_config": asdict(trainer.policy.config), "config": asdict(trainer.config),
                   "policy": {k: v.cpu() for k, v in trainer.policy.state_dict().items()},
                   "optimizer": trainer.optimizer.state_dict()}
        dist.broadcast_object_list([replica], src=0)
        self._wrap(trainer.policy, trainer.algorithm)
        trainer.parallel = self

    def step(self, batch: dict, optimizer) -> np.ndarray:
        """One data-parallel gradient step on the global `batch` (numpy arrays); the per-sample losses of all of
        it, in its order."""
        rows = len(batch["obs"])
        if rows % self.world:
            raise ValueError(f"a global batch of {rows} does not split into {self.world} equal shares")
        self._command(STEP, rows // self.world)
        packed = torch.as_tensor(np.concatenate(
            [batch["obs"], batch["target"], batch["task"][:, None], np.asarray(batch["flag"]).reshape(rows, 1)],
            axis=1, dtype=np.float32), device=self.device)
        mine = torch.empty(rows // self.world, packed.shape[1], device=self.device)
        dist.scatter(mine, list(packed.chunk(self.world)), src=0)
        per_sample = self._shard_step(mine, optimizer)
        gathered = [torch.empty(rows // self.world, device=self.device) for _ in range(self.world)]
        dist.gather(per_sample, gathered, dst=0)
        return torch.cat(gathered).cpu().numpy()

    def stop(self) -> None:
        """End the group: the followers return from `follow`, and every rank leaves the process group."""
        self._command(STOP)
        self._leave()

    def _leave(self) -> None:
        # Every rank drops its DDP wrapper (its reducer holds the process group) and waits for the others before
        # the group is destroyed: a rank that tears down its gloo connections while another still reads from
        # them, or a reducer outliving its group until interpreter exit, ends the process in std::terminate.
        self.ddp = None
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()

    # --- ranks 1.. ----------------------------------------------------------------------------------------

    def follow(self) -> nn.Module | None:
        """Serve rank 0 until it stops the group; returns the last replica's policy (None if it never had one)."""
        from learner import algorithms
        from learner.policy import MLPPolicy, PolicyConfig
        from learner.trainer import LearnerConfig

        optimizer = None
        while True:
            command, rows = self._command()
            if command == STOP:
                policy = self.ddp.module.policy if self.ddp is not None else None
                self._leave()
                return policy
            if command == SYNC:
                holder: list = [None]
                dist.broadcast_object_list(holder, src=0)
                replica = holder[0]
                config = LearnerConfig(**replica["config"])
                policy = MLPPolicy(PolicyConfig(**replica["policy_config"]))
                algorithm = algorithms.get(config.algorithm)(policy.config.tasks, config)
                policy = algorithm.prepare_policy(policy)
                policy.load_state_dict(replica["policy"])
                policy.train()
                optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
                optimizer.load_state_dict(replica["optimizer"])
                self._wrap(policy, algorithm)
            elif command == STEP:
                mine = torch.empty(rows, self.obs_dim + self.action_dim + 2, device=self.device)
                dist.scatter(mine, None, src=0)
                per_sample = self._shard_step(mine, optimizer)
                dist.gather(per_sample, None, dst=0)


_group: Group | None = None


def current() -> Group | None:
    """The group this process belongs to, when it runs under torchrun as the learner service."""
    return _group


def init() -> Group:
    """Join the torchrun process group (gloo on CPU, NCCL on GPUs)."""
    global _group
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("LEARNER_DEVICE", "auto") != "cpu" else "gloo"
    dist.init_process_group(backend)
    _group = Group()
    return _group
