"""The learner's training state and one gradient step (Django-free): policy, optimizer, buffer, resampler, RNG.

`Trainer.save` / `Trainer.load` make resume explicit: weights, optimizer moments, step, RNG states and the
resampler's history go to safetensors + JSON (never pickle), written to a temporary directory and renamed.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from learner import algorithms, defaults
from learner.buffer import ExperienceBuffer, Resampler
from learner.policy import MLPPolicy, PolicyConfig


@dataclass
class LearnerConfig:
    algorithm: str = defaults.ALGORITHM
    """Plug-in in learner/algorithms: one of defaults.ALGORITHMS."""
    batch_size: int = defaults.BATCH_SIZE
    """Samples per gradient step."""
    lr: float = defaults.LR
    """Adam learning rate."""
    publish_every: int = defaults.PUBLISH_EVERY
    """Gradient steps between published candidate versions."""
    alpha: float = defaults.RESAMPLER_ALPHA
    """SOP resampler: the online loss's weight in the online share."""
    window: int = 200
    """SOP resampler: learner steps in the loss moving averages."""
    resampler_scale: str = defaults.RESAMPLER_SCALE
    """SOP resampler: "raw" losses (the seed's formula) or "normalised" by their average (see buffer.Resampler)."""
    fixed_online_share: float | None = None
    """Ablation: a fixed online share instead of the SOP resampler."""
    seed: int = 0
    """Seeds torch and the sampler."""
    recap_lookahead: int = 15
    """RECAP: N of the N-step advantage (steps)."""
    recap_positive_fraction: float = 0.3
    """RECAP: share of frames labelled positive by the per-task advantage threshold."""
    recap_indicator_dropout: float = 0.3
    """RECAP: probability that a sample's indicator is dropped (classifier-free style)."""
    recap_value_steps: int = defaults.RECAP_VALUE_STEPS
    """RECAP: gradient steps fitting the value function before it is frozen."""
    steps_per_robot_second: float = 0.0
    """The controlled clock (experiments): at most this many gradient steps per second of robot time since the run
    started, robot time being wall time times `robot_pace`; 0: as many as the machine gives."""
    robot_pace: float = 1.0
    """The robots' declared pace (FLEET_REALTIME_FACTOR when the run started): robot seconds per wall second."""

    def __post_init__(self):
        algorithms.get(self.algorithm)
        if self.batch_size < 1 or self.publish_every < 1 or self.window < 1:
            raise ValueError("batch_size, publish_every and window must be positive")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if self.fixed_online_share is not None and not 0 <= self.fixed_online_share <= 1:
            raise ValueError("fixed_online_share must lie in [0, 1]")
        if not 0 < self.recap_positive_fraction < 1 or not 0 <= self.recap_indicator_dropout < 1:
            raise ValueError("recap_positive_fraction must lie in (0, 1) and recap_indicator_dropout in [0, 1)")
        if not self.steps_per_robot_second >= 0 or not self.robot_pace > 0:
            raise ValueError("steps_per_robot_second must be >= 0 and robot_pace positive")
        if self.recap_lookahead < 1 or self.recap_value_steps < 1:
            raise ValueError("recap_lookahead and recap_value_steps must be positive")


class Trainer:
    def __init__(self, policy: MLPPolicy, config: LearnerConfig, device: str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.algorithm = algorithms.get(config.algorithm)(policy.config.tasks, config)
        self.policy = self.algorithm.prepare_policy(policy).to(self.device).train()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.buffer = ExperienceBuffer(policy.config.tasks)
        self.resampler = self.new_resampler()
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.step = 0
        self.version = 0  # number of the version this learner's weights descend from / last published
        self.samples = {"online": 0, "offline": 0, "intervention": 0}
        self.parallel = None  # learner.distributed.Group, on every rank of a data-parallel group

    def new_resampler(self) -> Resampler:
        config = self.config
        return Resampler(self.policy.config.tasks, alpha=config.alpha, window=config.window,
                         fixed_share=config.fixed_online_share, scale=config.resampler_scale)

    def add_episode(self, task: str, source: str, arrays: dict, version: int, max_steps: int = 500,
                    episode_id: int = -1) -> int:
        """Fold one episode in; returns how many frames entered the buffer. With its id, the episode's frames
        can be taken out again (`remove_episodes`) when an annotator's label changes what it teaches."""
        if task not in self.buffer.tasks:
            return 0
        frames = self.algorithm.frames(task, source, arrays, max_steps)
        if frames is None:
            return 0
        index, target, flag = frames
        obs = arrays["obs"][index]
        row = (task, source, obs, target, version, flag, arrays["intervention"][index], episode_id)
        self.buffer.add(*row)
        if self.parallel is not None:  # every rank's replica of the buffer gets the same frames
            self.parallel.added(row)
        return len(obs)

    def remove_episodes(self, episodes) -> int:
        """Take these episodes' frames out of the buffer (every replica's); returns how many frames left."""
        episodes = sorted(episodes)
        if self.parallel is not None:
            self.parallel.removed(episodes)
        return self.buffer.remove_episodes(episodes)

    def train_step(self) -> dict | None:
        """One gradient step on a resampled batch; None while the buffer is empty.

        The batch is drawn as indices first (the plan, then each group's frames); in a data-parallel group every
        rank draws the same indices from its replica of the buffer (same RNG, same resampler) and gathers only
        its share of the rows (learner.distributed)."""
        plan = self.resampler.plan(self.config.batch_size, self.buffer, self.rng)
        if not plan:
            return None
        groups = [(task, source, count, self.buffer.draw(task, source, count, self.rng))
                  for (task, source), count in plan.items()]
        if self.parallel is not None:
            means, loss = self.parallel.step(self, groups)
        else:
            parts = []
            for task, source, count, index in groups:
                sample = self.buffer.rows(task, source, index, ("obs", "target", "flag"))
                sample["task"] = np.full(count, self.policy.config.tasks.index(task))
                parts.append(sample)
            tensors = {name: torch.as_tensor(np.concatenate([p[name] for p in parts]), device=self.device)
                       for name in ("obs", "target", "task", "flag")}
            per_sample = self.algorithm.per_sample_loss(self.policy, tensors)
            mean = per_sample.mean()
            self.optimizer.zero_grad(set_to_none=True)
            mean.backward()
            self.optimizer.step()
            loss = float(mean.detach())
            per_sample = per_sample.detach().cpu().numpy()
            offsets = np.cumsum([0] + [count for _, _, count, _ in groups])
            means = [float(per_sample[offsets[i]:offsets[i + 1]].mean()) for i in range(len(groups))]
        online_versions = []
        for (task, source, count, index), group_mean in zip(groups, means):
            self.resampler.record(task, source, group_mean)
            picked = self.buffer.rows(task, source, index, ("version", "intervention"))
            if source == "online":
                online_versions.append(picked["version"])
            self.samples[source] += count
            self.samples["intervention"] += int(picked["intervention"].sum())
        self.resampler.update()
        self.step += 1
        staleness = self.version - np.concatenate(online_versions) if online_versions else np.zeros(0)
        return {"loss": loss, "staleness_mean": float(staleness.mean()) if staleness.size else None,
                "staleness_max": int(staleness.max()) if staleness.size else None}

    # --- resume --------------------------------------------------------------------------------------

    def save(self, directory: Path, extra: dict | None = None) -> None:
        """Write the whole training state; `extra` (e.g. the episode cursor) is stored with it."""
        from safetensors.torch import save_file

        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {f"policy/{k}": v.detach().cpu().contiguous() for k, v in self.policy.state_dict().items()}
        opt = self.optimizer.state_dict()
        for index, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"optimizer/{index}/{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng/torch"] = torch.get_rng_state()
        algorithm_tensors, algorithm_meta = self.algorithm.state()
        tensors.update({f"algorithm/{k}": v for k, v in algorithm_tensors.items()})
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({
            "policy_config": asdict(self.policy.config), "config": asdict(self.config), "step": self.step,
            "version": self.version, "samples": self.samples, "param_groups": opt["param_groups"],
            "numpy_rng": self.rng.bit_generator.state, "resampler": self.resampler.state_dict(),
            "algorithm": algorithm_meta,
            "extra": extra or {},
        }))
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> tuple[Trainer, dict]:
        from safetensors.torch import load_file

        meta = json.loads((directory / "state.json").read_text())
        tensors = load_file(str(directory / "state.safetensors"))
        policy = MLPPolicy(PolicyConfig(**meta["policy_config"]))
        policy.load_state_dict({k.removeprefix("policy/"): v for k, v in tensors.items() if k.startswith("policy/")})
        trainer = cls(policy, LearnerConfig(**meta["config"]), device)
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/")
                state.setdefault(int(index), {})[name] = value.to(trainer.device) if name != "step" else value
        trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng/torch"])
        trainer.rng.bit_generator.state = meta["numpy_rng"]
        trainer.resampler.load_state_dict(meta["resampler"])
        trainer.algorithm.load_state({k.removeprefix("algorithm/"): v for k, v in tensors.items()
                                      if k.startswith("algorithm/")}, meta.get("algorithm", {}))
        trainer.step, trainer.version, trainer.samples = meta["step"], meta["version"], meta["samples"]
        return trainer, meta["extra"]
