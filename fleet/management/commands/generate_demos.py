"""Generate offline expert demonstrations: the offline half of the learner's buffer (source "offline demo")."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from fleet.ingest import ingest_episode
from fleet.models import Episode, Task


class Command(BaseCommand):
    help = ("Run the scripted expert with action noise on fixed demonstration seeds and store the successful "
            "episodes as offline demonstrations. Idempotent: seeds already stored are skipped.")

    def add_arguments(self, parser):
        parser.add_argument("--per-task", type=int, default=20, help="demonstrations wanted per task (default 20)")
        parser.add_argument("--noise", type=float, default=0.1,
                            help="std of Gaussian noise added to the expert's executed actions (default 0.1)")
        parser.add_argument("--tasks", nargs="*", help="task names (default: every enabled task)")

    def handle(self, *args, per_task: int, noise: float, tasks, **options):
        import numpy as np

        from fleet.sim.actor import run_episode
        from fleet.sim.envs import DEMO_SEED_BASE, make_task
        from fleet.sim.gate import Gate, GateConfig

        if per_task < 0 or not 0 <= noise <= 1:
            raise CommandError("--per-task must be >= 0 and --noise within [0, 1]")
        rows = Task.objects.filter(enabled=True) if not tasks else Task.objects.filter(env_name__in=tasks)
        missing = set(tasks or []) - set(rows.values_list("env_name", flat=True))
        if missing:
            raise CommandError(f"unknown task(s): {', '.join(sorted(missing))}")
        gate = Gate(GateConfig(enabled=False))
        for task in rows:
            demos = Episode.objects.filter(task=task, source=Episode.Source.OFFLINE_DEMO)
            have = demos.count()
            tried = set(demos.values_list("seed", flat=True))
            sim = make_task(task.env_name)
            rng = np.random.default_rng(task.pk)
            seed, attempts = DEMO_SEED_BASE, 0
            while have < per_task and attempts < per_task * 3:
                seed += 1
                if seed in tried:
                    continue
                attempts += 1
                noisy = lambda obs: sim.expert_action(obs) + rng.normal(0.0, noise, 4)  # noqa: E731
                result = run_episode(sim, noisy, seed, gate, max_steps=task.max_steps, realtime_factor=0)
                if result.outcome != "success":
                    continue  # demonstrations are the expert's successes
                finished = timezone.now()
                ingest_episode(
                    uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"sopweb-demo/{task.env_name}/{seed}"), task=task.env_name,
                    seed=seed, outcome=Episode.Outcome.SUCCESS, arrays=result.arrays,
                    started_at=finished - timedelta(seconds=result.steps * sim.dt), finished_at=finished,
                    source=Episode.Source.OFFLINE_DEMO, meta={"noise": noise, "expert": type(sim.expert).__name__},
                )
                have += 1
            self.stdout.write(f"{task.env_name}: {have} demonstrations")
            if have < per_task:
                self.stderr.write(f"{task.env_name}: only {have} of {per_task} after {attempts} attempts")
