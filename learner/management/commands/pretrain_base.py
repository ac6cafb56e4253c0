"""Pretrain the base policy by behaviour cloning on the offline demonstrations and publish it as a version."""
from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fleet.ingest import load_arrays
from fleet.models import Episode, Task
from learner.models import PolicyVersion, publish_version
from learner.signals import version_published


class Command(BaseCommand):
    help = ("Behaviour-clone a multi-task base policy on N offline demonstrations per task (a weak, medium or "
            "strong base: e.g. 5, 20, 80) and publish it; --deploy puts it on every robot.")

    def add_arguments(self, parser):
        parser.add_argument("--demos-per-task", type=int, default=settings.LEARNER_BASE_DEMOS)
        parser.add_argument("--steps", type=int, default=settings.LEARNER_BASE_STEPS,
                            help="gradient steps (batch 256)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--ensemble", type=int, default=1,
                            help="ensemble members (HG-DAgger's doubt metric is logged at takeovers when > 1)")
        parser.add_argument("--deploy", action="store_true", help="deploy it to the whole fleet")
        parser.add_argument("--if-none", action="store_true", help="do nothing if any version exists (demo start)")

    def handle(self, *args, demos_per_task: int, steps: int, seed: int, deploy: bool, if_none: bool,
               ensemble: int = 1, **options):
        import numpy as np
        import torch

        from learner.algorithms import bc
        from learner.policy import MLPPolicy, PolicyConfig

        if if_none and PolicyVersion.objects.exists():
            self.stdout.write("a policy version exists already; not pretraining")
            return
        if demos_per_task < 1 or steps < 1:
            raise CommandError("--demos-per-task and --steps must be positive")
        tasks = list(Task.objects.filter(enabled=True).values_list("env_name", flat=True))
        if not tasks:
            raise CommandError("no enabled tasks; run seed_demo or add tasks in the admin")
        episodes = []
        for task in tasks:
            demos = list(Episode.objects.filter(task__env_name=task, source=Episode.Source.OFFLINE_DEMO)
                         .order_by("seed")[:demos_per_task])
            if len(demos) < demos_per_task:
                raise CommandError(f"{task} has {len(demos)} demonstrations, {demos_per_task} wanted: "
                                   f"run `manage.py generate_demos --per-task {demos_per_task}` first")
            episodes += [(tasks.index(task), demo) for demo in demos]
        arrays = [(task_id, load_arrays(demo)) for task_id, demo in episodes]
        obs = torch.as_tensor(np.concatenate([a["obs"] for _, a in arrays]))
        target = torch.as_tensor(np.concatenate([a["expert_action"] for _, a in arrays]))
        task_ids = torch.as_tensor(np.concatenate([np.full(len(a["obs"]), t) for t, a in arrays]))

        torch.manual_seed(seed)
        try:
            policy = MLPPolicy(PolicyConfig(tasks=tasks, ensemble=ensemble))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        policy.set_normalization(obs.numpy())
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        started = time.monotonic()
        for step in range(1, steps + 1):
            index = torch.randint(0, len(obs), (256,), generator=generator)
            loss, metrics = bc.batch_loss(policy, {"obs": obs[index], "target": target[index],
                                                   "task": task_ids[index]})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 1000 == 0 or step == steps:
                self.stdout.write(f"step {step}: loss {metrics['loss']:.4f}")
        policy.eval()
        ids = [demo.pk for _, demo in episodes]
        version = publish_version(
            policy, algorithm="bc",
            config={"demos_per_task": demos_per_task, "steps": steps, "seed": seed, "batch_size": 256, "lr": 1e-3,
                    "hidden": policy.config.hidden, "ensemble": ensemble, "tasks": tasks},
            train_steps=steps, samples_offline=steps * 256, first_episode_id=min(ids), last_episode_id=max(ids),
        )
        self.stdout.write(f"published {version} (behaviour cloning on {len(ids)} demonstrations, "
                          f"{time.monotonic() - started:.0f} s)")
        version_published.send(sender=PolicyVersion, version=version, deploy=bool(deploy), reason="base policy")
        if deploy:
            self.stdout.write(f"deployed {version} to the fleet")
