"""Does the fleet learn? Runs the whole system — real actor, learner, default and background workers, beat,
PostgreSQL, Redis — for a fixed wall-clock budget on a private database, then evaluates the base policy and the
newest post-trained version on held-out evaluation seeds (policy alone, no expert), per task, with Wilson 95 %
intervals. Repeated runs (`--runs N`) give the mean and the spread across runs.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/learning.py --minutes 20 --runs 3 \
        [--algorithm hg_dagger|recap]

Each finished run is saved under bench/results/learning/ (committed), named by the hash of its spec and its run
number: a sweep that stops resumes with the runs it lacks, over several sessions; `--fresh` measures again. Each
run also records its own health — the learner's samples/s over the run (min / median), its steps and the versions
it published, and the CPU each process used — so a starved run is visible in its own output.

Goal (HG-DAgger, 4 robots at real-time pace): +30 points on average over the base, >= 0.9 on every task.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from datetime import timezone as dt_timezone

import _django

_django.setup("_learning")

from _system import Process, cpu_table, fleet_with_base, learner_rates, system_env  # noqa: E402,I001
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from fleet.models import Episode, Robot  # noqa: E402
from learner.evaluation import TaskScore, evaluate  # noqa: E402
from learner.models import PolicyVersion, TrainingRun  # noqa: E402
from sopweb.settings import FLEET_TASKS  # noqa: E402
from fleet import control  # noqa: E402

RESULTS = _django.ROOT / "bench" / "results" / "learning"
TUNING = ("LEARNER_", "FLEET_", "BACKGROUND_", "REVIEW_RENDER", "GOVERNANCE_", "ACTOR_", "ROLLOUT_")


def load(version: PolicyVersion):
    from pathlib import Path

    from django.conf import settings

    from learner.policy import load_checkpoint

    return load_checkpoint(Path(settings.STORAGE_DIR) / version.checkpoint_path, version.checkpoint_sha256)


def scores_json(scores: dict[str, TaskScore]) -> dict:
    return {task: {"successes": s.successes, "episodes": s.episodes} for task, s in scores.items()}


def scores_from(data: dict) -> dict[str, TaskScore]:
    return {task: TaskScore(task, d["successes"], d["episodes"], None) for task, d in data.items()}


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


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=_django.ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!*.md")
    return head + ("+changes" if dirty else "")


def write_atomically(path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def one_run(spec: dict, run_number: int, fresh: bool = False) -> dict:
    """One run on a fresh private database: set-up, the fleet for `minutes`, evaluation. Returns its record."""
    code = commit()  # the code this run's processes load (they start below)
    call_command("flush", interactive=False, verbosity=0)
    fleet_with_base(spec["robots"], spec["base_demos"])
    base_version = PolicyVersion.objects.get()
    # The base is cloned deterministically, so runs share it: its evaluation is kept by checkpoint hash.
    cached = RESULTS / f"base-{base_version.checkpoint_sha256[:16]}-{spec['eval_episodes']}.json"
    if cached.exists() and not fresh:
        base_scores = scores_from(json.loads(cached.read_text()))
        print(f"run {run_number}: base {base_version} evaluation read from {cached.name}", flush=True)
    else:
        started = time.monotonic()
        base_scores = evaluate(load(base_version), FLEET_TASKS, spec["eval_episodes"])
        write_atomically(cached, scores_json(base_scores))
        print(f"run {run_number}: base {base_version} evaluated in {time.monotonic() - started:.0f} s", flush=True)

    env = system_env(FLEET_REALTIME_FACTOR=spec["realtime_factor"], LEARNER_PUBLISH_EVERY=spec["publish_every"],
                     LEARNER_ALGORITHM=spec["algorithm"], LEARNER_SLICE_SECONDS=240)
    log_dir = _django.ROOT / "var" / "learning"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = [Process.worker(name, env, log_dir, concurrency=spec["robots"] if name == "actors" else None)
                 for name in ("actors", "learner", "default", "control", "background")]
    processes.append(Process.beat(env, log_dir))  # the whole system, with its sweeps and the learner's watchdog
    wall_start = time.monotonic()
    try:
        for robot in Robot.objects.all():
            control.start(robot, None, reason="learning experiment")
        call_command("learner", "start", "--algorithm", spec["algorithm"], stdout=io.StringIO())
        deadline = time.monotonic() + spec["minutes"] * 60
        next_report = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(min(5, max(0.1, deadline - time.monotonic())))
            for process in processes:
                process.cpu_seconds()  # a reading every few seconds: short-lived encoders are counted too
            if time.monotonic() < next_report and time.monotonic() < deadline:
                continue
            next_report += 60
            newest = PolicyVersion.objects.order_by("-number").first()
            online = Episode.objects.filter(source=Episode.Source.ONLINE)
            recent = learner_rates()[-20:]
            print(f"{(spec['minutes'] * 60 - (deadline - time.monotonic())) / 60:5.1f} min: {newest}, "
                  f"{online.count()} online episodes, success {online.filter(outcome='success').count()}, "
                  f"published at learner step {newest.train_steps if newest else 0}, recent learner "
                  f"{statistics.median(recent) if recent else 0:,.0f} samples/s", flush=True)
            connection.close()
        run = TrainingRun.objects.get(status="active")
        run.stop(reason="experiment budget spent")
        for robot in Robot.objects.all():
            control.stop(robot, None)
    finally:
        wall = time.monotonic() - wall_start
        cpu = {p.name: p.cpu_seconds() for p in processes}
        for process in processes:
            process.stop()
    run.refresh_from_db()
    final_version = PolicyVersion.objects.order_by("-number").first()
    final_scores = evaluate(load(final_version), FLEET_TASKS, spec["eval_episodes"])
    online = Episode.objects.filter(source=Episode.Source.ONLINE)
    rates = learner_rates()
    return {
        "spec": spec, "run": run_number, "commit": code,
        "finished": datetime.now(dt_timezone.utc).isoformat(timespec="seconds"),
        "base_version": base_version.number, "final_version": final_version.number,
        "base": scores_json(base_scores), "final": scores_json(final_scores),
        "learner_steps": run.step,
        "versions_published": PolicyVersion.objects.filter(number__gt=base_version.number).count(),
        "samples_per_second": {"min": min(rates, default=0), "median": statistics.median(rates) if rates else 0,
                               "points": len(rates)},
        "cpu_seconds": cpu, "wall_seconds": wall,
        "online_episodes": online.count(), "robot_steps": sum(online.values_list("steps", flat=True)),
        "intervention_steps": sum(online.values_list("intervention_steps", flat=True)),
    }


def report(record: dict) -> None:
    spec = record["spec"]
    base, final = scores_from(record["base"]), scores_from(record["final"])
    print(table(f"run {record['run']} ({record['commit']}): {spec['algorithm']}: v{record['base_version']} -> "
                f"v{record['final_version']} after {spec['minutes']:g} min with {spec['robots']} robots at factor "
                f"{spec['realtime_factor']:g}; {spec['eval_episodes']} held-out episodes per task", base, final))
    sps = record["samples_per_second"]
    print(f"  health: {record['learner_steps']:,} learner steps, {record['versions_published']} versions published; "
          f"learner samples/s min {sps['min']:,.0f} / median {sps['median']:,.0f} ({sps['points']} points); "
          f"{record['online_episodes']:,} online episodes, {record['robot_steps']:,} robot steps, "
          f"{record['intervention_steps']:,} intervention steps")
    print(f"  CPU over {record['wall_seconds'] / 60:.1f} min: {cpu_table(record['cpu_seconds'], record['wall_seconds'])}")


def summary(records: list[dict]) -> float:
    """The mean and the spread across runs, per task; returns the mean gain in points."""
    spec = records[0]["spec"]
    n = len(records)
    print(f"\n{spec['algorithm']}: {n} run(s) of {spec['minutes']:g} min, {spec['eval_episodes']} held-out episodes "
          f"per task and version; mean across runs [min, max]")
    print(f"{'task':<20} {'base':>18} {'post-trained':>18} {'change (points)':>22}")
    gains_by_run = [[] for _ in records]
    for task in spec["tasks"]:
        base = [scores_from(r["base"])[task].rate for r in records]
        final = [scores_from(r["final"])[task].rate for r in records]
        change = [100 * (f - b) for f, b in zip(final, base)]
        for i, c in enumerate(change):
            gains_by_run[i].append(c)
        print(f"{task:<20} {statistics.mean(base):5.2f} [{min(base):.2f}, {max(base):.2f}] "
              f"{statistics.mean(final):5.2f} [{min(final):.2f}, {max(final):.2f}] "
              f"{statistics.mean(change):+7.0f} [{min(change):+.0f}, {max(change):+.0f}]")
    mean_gains = [statistics.mean(g) for g in gains_by_run]
    steps = " / ".join(f"{r['learner_steps']:,}" for r in records)
    versions = " / ".join(str(r["versions_published"]) for r in records)
    print(f"learner steps per run {steps}; versions published {versions}; code: "
          f"{', '.join(sorted({r['commit'] for r in records}))}")
    print(f"mean gain per run: {' / '.join(f'{g:+.0f}' for g in mean_gains)}")
    print(f"mean success gain over {n} run(s): {statistics.mean(mean_gains):+.0f} points "
          f"[{min(mean_gains):+.0f}, {max(mean_gains):+.0f}]")
    return statistics.mean(mean_gains)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--algorithm", default="hg_dagger")
    parser.add_argument("--runs", type=int, default=1, help="repeated runs; finished ones are read from the cache")
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--base-demos", type=int, default=5)
    parser.add_argument("--publish-every", type=int, default=5000)
    parser.add_argument("--realtime-factor", type=float, default=1.0)
    parser.add_argument("--fresh", action="store_true", help="measure again even where a cached run exists")
    args = parser.parse_args()
    spec = {"algorithm": args.algorithm, "minutes": args.minutes, "robots": args.robots,
            "eval_episodes": args.eval_episodes, "base_demos": args.base_demos, "publish_every": args.publish_every,
            "realtime_factor": args.realtime_factor, "tasks": list(FLEET_TASKS)}
    # Settings that change what is measured, where the environment sets them: part of the spec, so a resumed
    # sweep never mixes runs of different configurations (the code's commit is recorded per run and printed).
    environment = {name: os.environ[name] for name in sorted(os.environ) if name.startswith(TUNING)}
    if environment:
        spec["environment"] = environment
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(1, args.runs + 1):
        path = RESULTS / f"{args.algorithm}-{key}-run{number}.json"
        if path.exists() and not args.fresh:
            record = json.loads(path.read_text())
            print(f"run {number}: cached ({path.relative_to(_django.ROOT)}, measured at {record['commit']})")
        else:
            record = one_run(spec, number, args.fresh)
            write_atomically(path, record)
        records.append(record)
        report(record)
    summary(records)


if __name__ == "__main__":
    main()
