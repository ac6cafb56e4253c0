"""Parameter sync: with 8 actors running at real-time factor 0, from the commit that assigns a new version to the
moment every actor process holds it loaded and ready (p50 / p99), and the adoption time (each robot's first
episode on the new version). The ratio compares the load-ready p99 with a bare floor measured in the same run:
a Redis publish to one subscriber process that loads the same checkpoint. Goals: load-ready p99 <= 100 ms;
adoption <= load-ready + one episode.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/sync_latency.py [--rounds 8] [--actors 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import _django

_django.setup()

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from core import bus  # noqa: E402
from fleet import control  # noqa: E402
from fleet.models import Episode, Robot, Task  # noqa: E402
from learner.models import PolicyVersion  # noqa: E402
from learner.policy import MLPPolicy, PolicyConfig, save_checkpoint  # noqa: E402

TASK = "pick-place-v3"
FLOOR = """
import json, sys, time, redis
from pathlib import Path
from learner.policy import load_checkpoint
r = redis.Redis.from_url(sys.argv[1])
p = r.pubsub(ignore_subscribe_messages=True)
p.subscribe("bench:floor")
r.set("bench:floor:up", "1")
for message in p.listen():
    body = json.loads(message["data"])
    if body.get("stop"):
        break
    load_checkpoint(Path(body["path"]), expected_sha256=body["sha256"])
    r.set("bench:floor:ready", json.dumps({"n": body["n"], "at": time.time()}))
"""


def publish_version(number: int) -> PolicyVersion:
    torch.manual_seed(number)
    path = f"policies/bench-sync-{number}"
    sha = save_checkpoint(MLPPolicy(PolicyConfig(tasks=[TASK])), Path(settings.STORAGE_DIR) / path)
    return PolicyVersion.objects.create(number=number, algorithm="bc", checkpoint_path=path, checkpoint_sha256=sha)


def wait(predicate, timeout=120.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit("timed out; see the worker log")


def floor(rounds: int, version: PolicyVersion) -> list[float]:
    r = bus.client()
    r.delete("bench:floor:up", "bench:floor:ready")
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, settings.REDIS_URL], cwd=_django.ROOT,
                            env=dict(os.environ, PYTHONPATH=str(_django.ROOT)))
    wait(lambda: r.exists("bench:floor:up"))
    latencies = []
    path = str(Path(settings.STORAGE_DIR) / version.checkpoint_path)
    for n in range(rounds):
        sent = time.time()
        r.publish("bench:floor", json.dumps({"n": n, "path": path, "sha256": version.checkpoint_sha256}))
        ready = wait(lambda: (v := r.get("bench:floor:ready")) and json.loads(v)["n"] == n and json.loads(v))
        latencies.append(ready["at"] - sent)
        time.sleep(0.05)
    r.publish("bench:floor", json.dumps({"stop": True}))
    proc.wait(10)
    return latencies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--actors", type=int, default=8)
    args = parser.parse_args()
    task = Task.objects.create(env_name=TASK, title="Pick place")
    first = publish_version(1)
    robots = []
    for i in range(args.actors):
        robot = Robot.objects.create(name=f"bench-{i:02d}", policy_version=first)
        robot.tasks.set([task])
        robots.append(robot)
    log = open(_django.ROOT / "var" / "bench-sync-worker.log", "wb")
    env = dict(os.environ, FLEET_REALTIME_FACTOR="0", DATABASE_URL=os.environ["DATABASE_URL"])
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "sopweb", "worker", "-Q", "actors", "--concurrency", str(args.actors),
         "--without-mingle", "--without-gossip", "-n", "bench-sync@%h", "--loglevel", "WARNING"],
        cwd=_django.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for robot in robots:
            control.start(robot, None, reason="benchmark")
        wait(lambda: all(Episode.objects.filter(robot=r).exists() for r in robots), timeout=300)
        print(f"{args.actors} actors running at factor 0")
        ready_ms, adoption_ms, episode_s, late_starts = [], [], [], []
        for n in range(2, args.rounds + 2):
            version = publish_version(n)
            committed = {}
            with transaction.atomic():
                transaction.on_commit(lambda: committed.setdefault("at", time.time()))  # runs first after COMMIT
                for robot in robots:
                    control.assign_version(robot, version, None, reason="benchmark")

            def all_ready():
                latest = []
                for robot in robots:
                    entries = [json.loads(v) for v in bus.client().hvals(bus.ready_key(robot.pk))]
                    mine = [e["at"] for e in entries if e["version"] == version.pk]
                    if not mine:
                        return None
                    latest.append(max(mine))  # every actor process holds it: any may run the next episode
                return latest

            for at in wait(all_ready):
                ready_ms.append((at - committed["at"]) * 1000)
            wait(lambda: all(Episode.objects.filter(robot=r, policy_version=version).exists() for r in robots))
            for robot in robots:
                first_on_new = Episode.objects.filter(robot=robot, policy_version=version).order_by("started_at")[0]
                adoption_ms.append((first_on_new.started_at.timestamp() - committed["at"]) * 1000)
                # Adopted at the first episode boundary: no episode started after the commit ran an older version.
                late = Episode.objects.filter(robot=robot, started_at__gt=first_on_new.started_at).exclude(
                    policy_version=version).count() + Episode.objects.filter(
                    robot=robot, started_at__gt=datetime.fromtimestamp(committed["at"], timezone.utc),
                    started_at__lt=first_on_new.started_at).count()
                late_starts.append(late)
            recent = Episode.objects.filter(robot__in=robots).order_by("-id")[: 3 * args.actors]
            episode_s += [(e.finished_at - e.started_at).total_seconds() for e in recent]
            connection.close()
            print(f"round {n - 1}: ready p50 {_django.percentile(ready_ms[-args.actors:], 50):.1f} ms, "
                  f"max {max(ready_ms[-args.actors:]):.1f} ms; adoption max {max(adoption_ms[-args.actors:]):.0f} ms")
        for robot in robots:
            control.stop(robot, None)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
    base = floor(args.rounds * 4, publish_version(999))
    p50, p99 = _django.percentile(ready_ms, 50), _django.percentile(ready_ms, 99)
    floor_p99 = _django.percentile(base, 99) * 1000
    one_episode = _django.percentile(episode_s, 99) * 1000  # the episode an actor may have just begun
    print(f"load-ready: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(ready_ms)} robot-assignments")
    print(f"adoption: p50 {_django.percentile(adoption_ms, 50):.0f} ms, p99 {_django.percentile(adoption_ms, 99):.0f} ms"
          f" (an episode takes up to {one_episode:.0f} ms here (p99); bound: ready p99 + that = {p99 + one_episode:.0f} ms)")
    print(f"episodes started after an assignment's commit on an older version: {sum(late_starts)}")
    print(f"floor (publish -> one subscriber loaded): p50 {_django.percentile(base, 50) * 1000:.1f} ms, "
          f"p99 {floor_p99:.1f} ms")
    print(f"load-ready p99 / floor p99 ratio: {p99 / floor_p99:.2f} (p99 {p99:.1f} ms)")


if __name__ == "__main__":
    main()
