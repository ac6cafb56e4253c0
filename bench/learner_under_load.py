"""Does the learner keep its share of the machine? Its own samples/s (the `TrainingMetric` rows it writes every 50
steps: sampling, the gradient step, folding new episodes, metrics) while the demo's load runs beside it — four
robots at real-time pace, their episodes ingested, one replay rendering after another as render-ahead does while
failures keep arriving, beat's sweeps — against the same learner alone, before and after, in the same run.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/learner_under_load.py [--threads N]

Goal: loaded / alone >= 0.5 (the last line).
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import _django

_django.setup("_underload")

from _system import Process, cpu_table, describe_rates, fleet_with_base, learner_rates, system_env, wait_until  # noqa: E402,I001
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from fleet.models import Episode, Robot  # noqa: E402
from learner.models import TrainingMetric, TrainingRun  # noqa: E402
from review.models import ReplayVideo  # noqa: E402
from fleet import control  # noqa: E402


def keep_one_render_going() -> None:
    """What render-ahead does while the fleet keeps failing: the newest failed episode without a replay is
    rendered as soon as the previous render is done."""
    busy = ReplayVideo.objects.filter(status__in=[ReplayVideo.Status.QUEUED, ReplayVideo.Status.RENDERING])
    if not busy.exists():
        newest = (Episode.objects.filter(source=Episode.Source.ONLINE).exclude(outcome="success")
                  .filter(replay__isnull=True).order_by("-pk").values_list("pk", flat=True).first())
        if newest is not None:
            ReplayVideo.request(newest)


def phase(name: str, seconds: float, processes: list[Process], tick=None) -> tuple[list[float], dict]:
    before = {p.name: p.cpu_seconds() for p in processes}
    since = timezone.now()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        for process in processes:
            process.cpu_seconds()  # a reading every second or so: short-lived encoders are counted too
        time.sleep(1.0)
        connection.close()
    rates = learner_rates(since, timezone.now())
    usage = {p.name: p.cpu_seconds() - before[p.name] for p in processes}
    print(f"{name:<7} {describe_rates(rates)}", flush=True)
    print(f"        CPU: {cpu_table(usage, seconds)}", flush=True)
    return rates, usage


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="the learner's torch threads (default: setting)")
    parser.add_argument("--alone", type=float, default=60, help="seconds of each phase with the learner alone")
    parser.add_argument("--loaded", type=float, default=180, help="seconds of the loaded phase (after warm-up)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds for the fleet to reach its pace")
    args = parser.parse_args()
    fleet_with_base(robots=4, base_demos=5)
    log_dir = _django.ROOT / "var" / "learner_under_load"
    log_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"LEARNER_SLICE_SECONDS": 240, "FLEET_REALTIME_FACTOR": 1.0}
    if args.threads:
        overrides["LEARNER_TORCH_THREADS"] = args.threads
    env = system_env(**overrides)
    learner = Process.worker("learner", env, log_dir)
    load: list[Process] = []
    try:
        call_command("learner", "start", "--algorithm", "hg_dagger", stdout=io.StringIO())
        wait_until(lambda: TrainingMetric.objects.exists(), 120, "the learner's first metrics")
        alone_before, _ = phase("alone", args.alone, [learner])

        load = [Process.worker(name, env, log_dir) for name in ("actors", "default", "control", "background")]
        load.append(Process.beat(env, log_dir))
        for robot in Robot.objects.all():
            control.start(robot, None, reason="learner under load")
        wait_until(lambda: Episode.objects.filter(source=Episode.Source.ONLINE).count() >= 4, 120,
                   "the robots' first episodes")
        time.sleep(args.warmup)
        loaded, _ = phase("loaded", args.loaded, [learner, *load], keep_one_render_going)
        rendered = ReplayVideo.objects.filter(status=ReplayVideo.Status.READY).count()
        episodes = Episode.objects.filter(source=Episode.Source.ONLINE).count()

        for robot in Robot.objects.all():
            control.stop(robot, None)
        for process in load:
            process.stop()
        alone_after, _ = phase("alone", args.alone, [learner])
        TrainingRun.objects.get(status="active").stop(reason="benchmark done")
    finally:
        for process in [*load, learner]:
            process.stop()
    alone = alone_before + alone_after
    threads = args.threads or settings.LEARNER_TORCH_THREADS
    print(f"{episodes} online episodes, {rendered} replays rendered; learner with {threads} torch thread(s)")
    print(f"learner alone {statistics.median(alone):,.0f} samples/s, under load {statistics.median(loaded):,.0f} "
          f"(min {min(loaded):,.0f})")
    print(f"under load / alone: {statistics.median(loaded) / statistics.median(alone):.2f}")


if __name__ == "__main__":
    main()
