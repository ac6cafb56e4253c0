"""Does the fleet learn? Runs the whole system — real actor and learner workers, PostgreSQL, Redis — for a fixed
wall-clock budget on a private database, then evaluates the base policy and the newest post-trained version on
held-out evaluation seeds (policy alone, no expert), per task, with Wilson 95 % intervals.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/learning.py --minutes 60 [--algorithm hg_dagger]

Goal (HG-DAgger, 4 robots at real-time pace): +30 points on average over the base, >= 0.9 on every task.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time

import _django

_django.setup("_learning")

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from fleet.models import Episode, Robot, Task  # noqa: E402
from learner.evaluation import evaluate  # noqa: E402
from learner.models import PolicyVersion, TrainingRun  # noqa: E402
from sopweb.settings import FLEET_TASKS  # noqa: E402


def load(version: PolicyVersion):
    from pathlib import Path

    from django.conf import settings

    from learner.policy import load_checkpoint

    return load_checkpoint(Path(settings.STORAGE_DIR) / version.checkpoint_path, version.checkpoint_sha256)


def table(title: str, base: dict, final: dict) -> str:
    lines = [title, f"{'task':<20} {'base':>22} {'post-trained':>22} {'change':>8}"]
    for task in base:
        b, f = base[task], final[task]
        bl, bh = b.wilson()
        fl, fh = f.wilson()
        lines.append(f"{task:<20} {b.rate:5.2f} [{bl:.2f}, {bh:.2f}] n={b.episodes:<3} "
                     f"{f.rate:5.2f} [{fl:.2f}, {fh:.2f}] n={f.episodes:<3} {100 * (f.rate - b.rate):+7.0f}")
    mean_b = sum(s.rate for s in base.values()) / len(base)
    mean_f = sum(s.rate for s in final.values()) / len(final)
    lines.append(f"{'mean':<20} {mean_b:5.2f}{'':>17} {mean_f:5.2f}{'':>17} {100 * (mean_f - mean_b):+7.0f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--algorithm", default="hg_dagger")
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--base-demos", type=int, default=5)
    parser.add_argument("--publish-every", type=int, default=5000)
    parser.add_argument("--realtime-factor", type=float, default=1.0)
    args = parser.parse_args()
    out = io.StringIO()
    for name in FLEET_TASKS:
        Task.objects.create(env_name=name, title=name)
    for i in range(args.robots):
        Robot.add(f"exp-{i + 1:02d}", list(Task.objects.all()))
    call_command("generate_demos", "--per-task", str(args.base_demos), stdout=out)
    call_command("pretrain_base", "--demos-per-task", str(args.base_demos), "--deploy", stdout=out)
    base_version = PolicyVersion.objects.get()
    started = time.monotonic()
    base_scores = evaluate(load(base_version), FLEET_TASKS, args.eval_episodes)
    print(f"base {base_version} evaluated in {time.monotonic() - started:.0f} s", flush=True)

    env = dict(os.environ, ROLLOUT_MODE="continuous", FLEET_REALTIME_FACTOR=str(args.realtime_factor),
               LEARNER_PUBLISH_EVERY=str(args.publish_every), LEARNER_ALGORITHM=args.algorithm,
               LEARNER_SLICE_SECONDS="240")
    log_dir = _django.ROOT / "var" / "learning"
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    commands = {
        name: [sys.executable, "-m", "celery", "-A", "sopweb", "worker", "-Q", queues, "--concurrency",
               str(concurrency), "-n", f"learning-{name}@%h", "--without-mingle", "--without-gossip",
               "--loglevel", "INFO"]
        for name, queues, concurrency in [("actors", "actors", args.robots), ("learner", "learner", 1),
                                          ("default", "default", 1)]
    }
    # Beat too: the whole system, with its sweeps and the learner's watchdog.
    commands["beat"] = [sys.executable, "-m", "celery", "-A", "sopweb", "beat", "--loglevel", "INFO",
                        "--schedule", str(log_dir / "celerybeat-schedule")]
    for name, command in commands.items():
        log = open(log_dir / f"{name}.log", "wb")
        workers.append(subprocess.Popen(command, cwd=_django.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    try:
        for robot in Robot.objects.all():
            robot.start(None, reason="learning experiment")
        call_command("learner", "start", "--algorithm", args.algorithm, stdout=out)
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(60, max(1, deadline - time.monotonic())))
            newest = PolicyVersion.objects.order_by("-number").first()
            online = Episode.objects.filter(source=Episode.Source.ONLINE)
            print(f"{(args.minutes * 60 - (deadline - time.monotonic())) / 60:5.1f} min: {newest}, "
                  f"{online.count()} online episodes, success {online.filter(outcome='success').count()}, "
                  f"intervention steps {sum(online.values_list('intervention_steps', flat=True))}", flush=True)
            connection.close()
        TrainingRun.objects.get(status="active").stop(reason="experiment budget spent")
        for robot in Robot.objects.all():
            robot.stop(None)
    finally:
        for worker in workers:
            os.killpg(worker.pid, 15)
        for worker in workers:
            worker.wait(60)
    final_version = PolicyVersion.objects.order_by("-number").first()
    final_scores = evaluate(load(final_version), FLEET_TASKS, args.eval_episodes)
    online = Episode.objects.filter(source=Episode.Source.ONLINE)
    print(f"{online.count()} online episodes, {sum(online.values_list('steps', flat=True))} robot steps, "
          f"{sum(online.values_list('intervention_steps', flat=True))} intervention steps; "
          f"{final_version.train_steps} learner steps")
    print(table(f"{args.algorithm}: {base_version} -> {final_version} after {args.minutes:g} min with "
                f"{args.robots} robots at factor {args.realtime_factor:g}; {args.eval_episodes} held-out "
                f"episodes per task", base_scores, final_scores))
    mean_gain = sum(final_scores[t].rate - base_scores[t].rate for t in FLEET_TASKS) / len(FLEET_TASKS)
    print(f"mean success gain: {100 * mean_gain:+.0f} points")


if __name__ == "__main__":
    main()
