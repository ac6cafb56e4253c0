"""What counting costs ingestion: episodes per second through the product's ingestion path (fleet.ingest:
validation, one INSERT, events) with Prometheus metrics on (core.metrics: the latency histogram, the per-task
counter after commit, both in prometheus_client's multiprocess files) against the same with metrics off, in the
same process and run. On and off alternate episode by episode (on, off, off, on, ...; each timed alone), so that
drift on a noisy machine hits both alike; each rep's throughput is its episodes over their summed times.
Goal: ratio >= 0.95.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/metrics_overhead.py [--episodes 300] [--reps 7]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import timedelta

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sopweb-bench-metrics-")

import _django  # noqa: E402

_django.setup()

import numpy as np  # noqa: E402
from django.utils import timezone  # noqa: E402

from core import metrics  # noqa: E402
from fleet.ingest import ingest_episode  # noqa: E402
from fleet.models import Episode, Robot, Task  # noqa: E402
from fleet.sim.actor import run_episode  # noqa: E402
from fleet.sim.envs import make_task  # noqa: E402
from fleet.sim.gate import Gate, GateConfig  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()

    Task.objects.create(env_name="pick-place-v3", title="Pick place")
    robot = Robot.objects.create(name="bench-robot")
    # A real 500-step episode with expert takeovers, as the fleet records them.
    result = run_episode(make_task("pick-place-v3"), lambda obs: np.zeros(4, np.float32), 3,
                         Gate(GateConfig(no_progress_steps=150, divergence=10.0, min_hold_steps=40)), realtime_factor=0)
    print(f"episode: {result.steps} steps; metrics files in {metrics.DIRECTORY}")

    def ingest_one(enabled: bool) -> float:
        metrics.ENABLED = enabled
        now = timezone.now()
        start = time.perf_counter()
        ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=7, outcome=result.outcome, arrays=result.arrays,
                       started_at=now - timedelta(seconds=6), finished_at=now, robot_id=robot.pk,
                       source=Episode.Source.ONLINE)
        return time.perf_counter() - start

    def rep(n: int) -> tuple[float, float]:
        """(episodes/s with metrics on, with metrics off), n of each, alternating."""
        spent = {True: 0.0, False: 0.0}
        for i in range(2 * n):
            enabled = i % 4 in (0, 3)  # on, off, off, on, ...: each goes first and second equally often
            spent[enabled] += ingest_one(enabled)
        return n / spent[True], n / spent[False]

    rep(30)  # warm up the connection, the prepared statements, the metric files
    counted_before = sum(m.value for m in metrics.EPISODES_INGESTED.collect()[0].samples if m.name.endswith("_total"))
    ratios, ons, offs = [], [], []
    for number in range(args.reps):
        on, off = rep(args.episodes)
        ons.append(on), offs.append(off), ratios.append(on / off)
        print(f"rep {number + 1}: metrics on {on:7.1f}/s   off {off:7.1f}/s   ratio {on / off:.3f}")
    counted = sum(m.value for m in metrics.EPISODES_INGESTED.collect()[0].samples
                  if m.name.endswith("_total")) - counted_before
    expected = args.reps * args.episodes
    assert counted == expected, f"counted {counted}, ingested {expected} with metrics on"
    print(f"counted exactly the {counted:.0f} episodes ingested with metrics on")
    metrics.ENABLED = True
    start, calls = time.perf_counter(), 20000
    for _ in range(calls):  # what ingestion adds per episode, alone: one histogram observation, one labelled count
        with metrics.timing(metrics.INGEST_SECONDS):
            pass
        metrics.episode_ingested("pick-place-v3", "online", True, False)
    print(f"the metrics calls alone: {(time.perf_counter() - start) / calls * 1e6:.1f} µs per episode")
    print(f"median: metrics on {_django.median(ons):.1f} episodes/s, off {_django.median(offs):.1f} episodes/s")
    print(f"metrics on/off ratio: {_django.median(ratios):.3f}")


if __name__ == "__main__":
    main()
