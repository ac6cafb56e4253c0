"""The whole system for benchmarks that run it: a fleet with a base policy, the real Celery processes (each in its
own session, as honcho starts the Procfile's), the CPU each one used, and the learner's own metrics."""
from __future__ import annotations

import io
import os
import statistics
from pathlib import Path

from experiments import processes
from experiments.processes import wait_until  # noqa: F401  (the benchmarks' import)
from fleet import control

# name -> (queues, concurrency): the Procfile's workers, for four robots (`default` does only beat's light work
# now that renders run on `background` and governance, sweeps and the watchdog on `control`, so one process).
PROCESSES = {"actors": ("actors", 4), "learner": ("learner", 1), "default": ("default", 1),
             "control": ("control", 1), "background": ("background", 1)}


def fleet_with_base(robots: int, base_demos: int) -> None:
    """The default tasks, `robots` robots, demonstrations and a base policy cloned from them, deployed."""
    from django.core.management import call_command

    from fleet.models import Task
    from sopweb.settings import FLEET_TASKS

    out = io.StringIO()
    for name in FLEET_TASKS:
        Task.objects.create(env_name=name, title=name)
    for i in range(robots):
        control.add(f"exp-{i + 1:02d}", list(Task.objects.all()))
    call_command("generate_demos", "--per-task", str(base_demos), stdout=out)
    call_command("pretrain_base", "--demos-per-task", str(base_demos), "--deploy", stdout=out)


class Process(processes.Process):
    """One Celery process of the system (experiments.processes), named after the Procfile's workers."""

    @classmethod
    def worker(cls, name: str, env: dict, log_dir: Path, queues: str | None = None,
               concurrency: int | None = None) -> Process:
        default_queues, default_concurrency = PROCESSES[name]
        return super().worker(name, queues or default_queues, concurrency or default_concurrency, env, log_dir)


def system_env(**overrides) -> dict:
    return dict(os.environ, ROLLOUT_MODE="continuous", **{k: str(v) for k, v in overrides.items()})


def learner_rates(since=None, until=None) -> list[float]:
    """The learner's own samples/s (one point per 50 steps), between two times."""
    from learner.models import TrainingMetric

    rows = TrainingMetric.objects.all()
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lte=until)
    return list(rows.order_by("created_at").values_list("samples_per_second", flat=True))


def describe_rates(rates: list[float]) -> str:
    if not rates:
        return "no learner metrics"
    return (f"min {min(rates):,.0f} / median {statistics.median(rates):,.0f} / max {max(rates):,.0f} samples/s "
            f"over {len(rates)} points")


def cpu_table(usage: dict[str, float], seconds: float) -> str:
    """CPU seconds per process group and as a share of one core over `seconds` of wall time."""
    return "  ".join(f"{name} {cpu:,.0f} s ({100 * cpu / seconds:.0f} %)" for name, cpu in usage.items())
