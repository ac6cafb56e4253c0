"""The data-parallel learner: LEARNER_WORLD_SIZE processes under `torchrun`, a long-running service in place of the
Celery slices (`python -m learner.service` starts it; the Procfile's `learner` entry runs that).

Rank 0 is the learner as before (learner.loop: the lease, folding episodes, publishing versions, saving resumable
state), looping over slices itself instead of queueing them. Every rank holds a replica of the trainer: policy,
optimizer, the experience buffer, the resampler and the sampling RNG. Rank 0 reads PostgreSQL and turns each
episode into frames; the frames (not the episode) go to every rank, so the replicas' buffers stay identical without
the others knowing the algorithm's labelling state (RECAP's value function).

Every gradient step each rank draws the same global batch as indices (LEARNER_BATCH_SIZE, the draw one process
would make: same RNG, same resampler, same buffer), gathers only its own share of the rows and runs forward and
backward on it through DistributedDataParallel, which all-reduces (averages) the gradients: the mean of the shares'
mean losses is the global batch's mean loss, so the step equals the single-process step on the same batch. Each
rank then takes the same Adam step and its replica stays identical. The shares' per-group loss sums are
all-reduced too, so every rank's resampler records the same group means and the next draw is again the same.

NCCL on GPUs, gloo on CPU. A rank that dies ends the group (torchrun stops the others); started again, rank 0
resumes from the saved state like any learner and sends the others their replicas.
"""
from __future__ import annotations

import gc
import logging
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

STOP, STEP, SYNC, ADD, REMOVE, IDLE = 0, 1, 2, 3, 4, 5


class LossModule(nn.Module):
    """The algorithm's per-sample loss as a module, so DDP sees the policy's parameters go through forward()."""

    def __init__(self, policy: nn.Module, algorithm):
        super().__init__()
        self.policy, self.algorithm = policy, algorithm

    def forward(self, obs, target, task, flag):
        return self.algorithm.per_sample_loss(self.policy, {"obs": obs, "target": target, "task": task,
                                                            "flag": flag})


class Group:
    """This process's place in the group. Rank 0 drives (`attach`, the trainer's steps and folds, `stop`); the
    others `follow`."""

    def __init__(self):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    # --- both sides ---------------------------------------------------------------------------------------

    def _command(self, command: int = 0) -> int:
        """Rank 0 says what comes next; the others hear it."""
        value = torch.tensor([command], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return int(value[0])

    def _object(self, value=None):
        """Rank 0's `value`, on every rank."""
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _wrap(self, trainer) -> None:
        # Constructing DDP broadcasts rank 0's parameters and buffers: every replica starts identical. The buffers
        # (the observation normaliser) never change afterwards, so they are not sent again at every forward.
        module = LossModule(trainer.policy, trainer.algorithm)
        self.ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None, forward_sync_buffers=False)
        trainer.parallel = self

    def step(self, trainer, groups: list) -> tuple[list[float], float]:
        """One data-parallel gradient step on the global batch `groups` ([(task, source, count, indices)], the
        same on every rank): this rank's share of the rows, gradients averaged over the ranks. Returns each group's
        mean loss and the batch's mean loss (the same on every rank)."""
        if self.rank == 0:
            self._command(STEP)
        rows = sum(count for _, _, count, _ in groups)
        if rows % self.world:
            raise ValueError(f"a global batch of {rows} does not split into {self.world} equal shares")
        share = rows // self.world
        low, high = self.rank * share, (self.rank + 1) * share
        parts, pieces, offset = [], [], 0
        for number, (task, source, count, index) in enumerate(groups):
            start, end = max(low, offset), min(high, offset + count)
            if start < end:
                sample = trainer.buffer.rows(task, source, index[start - offset:end - offset], ("obs", "target", "flag"))
                sample["task"] = np.full(end - start, trainer.policy.config.tasks.index(task))
                parts.append(sample)
                pieces.append((number, end - start))
            offset += count
        mine = {name: torch.as_tensor(np.concatenate([p[name] for p in parts]), device=self.device)
                for name in ("obs", "target", "task", "flag")}
        per_sample = self.ddp(mine["obs"], mine["target"], mine["task"], mine["flag"])
        trainer.optimizer.zero_grad(set_to_none=True)
        per_sample.mean().backward()  # DDP averages the gradients across ranks here
        trainer.optimizer.step()
        sums = torch.zeros(len(groups), dtype=torch.float64, device=self.device)
        at = 0
        for number, length in pieces:
            sums[number] = per_sample[at:at + length].detach().double().sum()
            at += length
        dist.all_reduce(sums)  # every rank's resampler records the same group means
        totals = sums.cpu().numpy()
        return [float(total / count) for total, (_, _, count, _) in zip(totals, groups)], float(totals.sum() / rows)

    # --- rank 0 -------------------------------------------------------------------------------------------

    def attach(self, trainer) -> None:
        """Give every rank a replica of `trainer` (a new or resumed trainer): policy, optimizer, buffer, resampler
        and sampling RNG."""
        from dataclasses import asdict

        self._command(SYNC)
        resampler = trainer.resampler.state_dict()
        self._object({"policy_config": asdict(trainer.policy.config), "config": asdict(trainer.config),
                      "policy": {k: v.cpu() for k, v in trainer.policy.state_dict().items()},
                      "optimizer": trainer.optimizer.state_dict(), "rng": trainer.rng.bit_generator.state,
                      "resampler": resampler, "buffer": trainer.buffer.contents()})
        # The resampler's running sums, rebuilt from the history sent, as the others rebuild theirs: sums kept up
        # step by step may differ from them in the last bits, and the ranks' draws must not.
        trainer.resampler = trainer.new_resampler()
        trainer.resampler.load_state_dict(resampler)
        self._wrap(trainer)

    def idle(self) -> None:
        """Rank 0 has nothing to do for a while: the others hear from it, so no collective waits out its timeout."""
        self._command(IDLE)

    def added(self, row: tuple) -> None:
        """Frames rank 0 added to its buffer (ExperienceBuffer.add's arguments): every replica adds them."""
        self._command(ADD)
        self._object(row)

    def removed(self, episodes: list) -> None:
        self._command(REMOVE)
        self._object(episodes)

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
        trainer = None
        while True:
            command = self._command()
            if command == STOP:
                self._leave()
                return trainer.policy if trainer is not None else None
            if command == SYNC:
                trainer = self._replica(self._object())
            elif command == ADD:
                trainer.buffer.add(*self._object())
            elif command == REMOVE:
                trainer.buffer.remove_episodes(self._object())
            elif command == STEP:
                trainer.train_step()  # the same draw as rank 0's; Trainer.train_step calls step() above
            # IDLE: rank 0 is waiting for work; hearing it was the point

    def _replica(self, replica: dict):
        from learner.policy import MLPPolicy, PolicyConfig
        from learner.trainer import LearnerConfig, Trainer

        trainer = Trainer(MLPPolicy(PolicyConfig(**replica["policy_config"])), LearnerConfig(**replica["config"]),
                          str(self.device))
        trainer.policy.load_state_dict(replica["policy"])
        trainer.optimizer.load_state_dict(replica["optimizer"])
        trainer.rng.bit_generator.state = replica["rng"]
        trainer.resampler.load_state_dict(replica["resampler"])
        trainer.buffer.load_contents(replica["buffer"])
        self.ddp = None
        gc.collect()
        self._wrap(trainer)
        return trainer


_group: Group | None = None


def current() -> Group | None:
    """The group this process belongs to, when it runs under torchrun as the learner service."""
    return _group


def init() -> Group:
    """Join the torchrun process group (gloo on CPU, NCCL on GPUs)."""
    global _group
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("LEARNER_DEVICE", "auto") != "cpu" else "gloo"
    # Rank 0 tells the others it is idle at every idle poll (learner.service), but one slice may hold them waiting
    # longer than the default collective timeout (30 min on gloo) while it folds a long history or fits a value.
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    _group = Group()
    return _group
