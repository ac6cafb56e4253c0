"""One experiment run on the real system: a fleet with a base policy, the Celery processes (actors, learner,
default and control workers, beat), the controlled clock, the kept checkpoints and their held-out evaluation.

`execute` runs inside a child process of the `experiment` command whose environment (`private_env`) names the
run's own PostgreSQL database, Redis database and storage directory, so a run shares nothing with the product's
data or with another run. Time is robot time: wall time since the learner started times the declared pace.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import statistics
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)
VALID_WITHIN = 0.05  # a run whose robots or learner fell more than 5 % short of the declared clock is invalid
WORKERS = {"actors": "actors", "learner": "learner", "default": "default", "control": "control"}


def private_env(spec: dict, database: str, run_dir: Path) -> dict:
    """The environment of a run's child process and of every process of its system."""
    from django.conf import settings

    from experiments.databases import database_url

    redis = urlsplit(settings.REDIS_URL)
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": database_url(database),
        "DATABASE_POOL": "0",
        "REDIS_URL": urlunsplit(redis._replace(path=f"/{settings.EXPERIMENTS_REDIS_DB}")),
        # The run's queues on its own Redis database too, never the product's broker (same queue names).
        "CELERY_BROKER_URL": urlunsplit(redis._replace(path=f"/{settings.EXPERIMENTS_REDIS_DB}")),
        "SOPWEB_STORAGE_DIR": str(run_dir / "storage"),
        "STORAGE_URL": "",  # a run's files stay in its own folder, whatever the product's storage is
        "SOPWEB_STORAGE_CACHE_DIR": str(run_dir / "cache"),
        "FLEET_OUTBOX_DIR": str(run_dir / "outbox"),
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
        "FLEET_TASKS": ",".join(spec["tasks"]),
        "FLEET_REALTIME_FACTOR": str(spec["pace"]),
        "LEARNER_STEPS_PER_ROBOT_SECOND": str(spec["learner_rate"]),
        "LEARNER_PUBLISH_EVERY": str(spec["publish_every"]),
        "LEARNER_ALGORITHM": spec["algorithm"],
        "LEARNER_RESAMPLER_SCALE": spec["resampler_scale"],
        "LEARNER_RECAP_BASE_ROLLOUTS": str(spec["recap_base_rollouts"]),
        "ROLLOUT_MODE": "continuous",  # SOP: every published version goes to the fleet at once
        "REVIEW_RENDER_AHEAD": "0",  # nobody reviews an experiment's episodes: renders would only take CPU
        "DJANGO_SETTINGS_MODULE": "sopweb.settings",
    })
    return env


def _robot_seconds(t0: datetime, t: datetime, pace: float) -> float:
    return (t - t0).total_seconds() * pace


def set_up(spec: dict, resolved: dict) -> tuple[int, int]:
    """Tasks, robots, demonstrations and a base cloned from them, deployed to every robot. Returns the
    demonstrations per task and the pretraining steps used: an arm matched to another arm's expert frames
    (`resolved["extra_expert_frames"]`) gets as many more demonstrations as hold that many expert-labelled frames,
    and that arm's learner steps on top of its own pretraining."""
    import math

    from django.core.management import call_command

    from fleet import control
    from fleet.models import Episode, Task

    out = io.StringIO()
    tasks = [Task.objects.create(env_name=name, title=name) for name in spec["tasks"]]
    online = [task for task in tasks if task.env_name in (spec["online_tasks"] or spec["tasks"])]
    for i in range(spec["robots"]):
        control.add(f"exp-{i + 1:02d}", online, reason="experiment")
    demos, steps = spec["base_demos"], spec["base_steps"] + int(resolved.get("extra_learner_steps", 0))
    call_command("generate_demos", "--per-task", str(demos), stdout=out)
    if extra := resolved.get("extra_expert_frames"):
        lengths = list(Episode.objects.filter(source=Episode.Source.OFFLINE_DEMO).values_list("steps", flat=True))
        demos += math.ceil(extra / len(tasks) / statistics.mean(lengths))
        call_command("generate_demos", "--per-task", str(demos), stdout=out)
    call_command("pretrain_base", "--demos-per-task", str(demos), "--steps", str(steps), "--deploy", stdout=out)
    return demos, steps


def keep(version, run_dir: Path, robot_seconds: float) -> dict:
    """Copy a version's checkpoint into the run's directory (retention may delete the original later); the entry
    `evaluate_kept` reads, with the robot time at which the version was published."""
    from django.conf import settings

    target = run_dir / "checkpoints" / f"v{version.number}"
    if not target.exists():
        shutil.copytree(Path(settings.STORAGE_DIR) / version.checkpoint_path, target)
    return {"number": version.number, "sha256": version.checkpoint_sha256, "path": str(target),
            "train_steps": version.train_steps, "robot_seconds": robot_seconds}


def fleet_phase(spec: dict, run_dir: Path, env: dict, say) -> dict:
    """Run the fleet and the learner for the spec's robot time; keep every k-th published version."""
    from django.db import connection

    from experiments.processes import Process, wait_until
    from fleet import control
    from fleet.models import Robot
    from learner.loop import start_run
    from learner.models import PolicyVersion, TrainingRun

    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = [Process.worker(name, queues, spec["robots"] if name == "actors" else 1, env, log_dir,
                                prefix="experiment") for name, queues in WORKERS.items()]
    processes.append(Process.beat(env, log_dir))
    base = PolicyVersion.deployed()
    kept, seen = [], set()
    try:
        for robot in Robot.objects.all():
            control.start(robot, None, reason="experiment")
        # The clock starts when every robot runs (an actor's first task imports and builds its scenes).
        running = (Robot.Status.RUNNING, Robot.Status.EXPERT)
        wait_until(lambda: Robot.objects.filter(status__in=running).count() == spec["robots"], 300,
                  "every robot to run its first episode")
        run = start_run(spec["algorithm"], None, fixed_online_share=spec["fixed_online_share"],
                        resampler_scale=spec["resampler_scale"], steps_per_robot_second=spec["learner_rate"],
                        robot_pace=spec["pace"])
        t0 = run.created_at
        budget = spec["robot_minutes"] * 60
        say(f"clock started: {spec['robots']} robot(s) at pace {spec['pace']:g}, learner "
            f"{spec['learner_rate']:g} steps per robot-second, {budget:g} robot-seconds")
        next_report = time.monotonic() + 60
        shift_at = spec["shift_at_minutes"] * 60 if spec["shift_at_minutes"] is not None else None
        shifted_at = None
        while True:
            now = datetime.now(dt_timezone.utc)
            for version in PolicyVersion.objects.filter(number__gt=base.number).exclude(number__in=seen) \
                    .order_by("number"):
                seen.add(version.number)
                at = _robot_seconds(t0, version.created_at, spec["pace"])
                dense = spec.get("eval_dense_minutes")  # every version until then (the fleet sweep)
                if (version.number - base.number) % spec["eval_every"] == 0 or (dense and at <= dense * 60):
                    kept.append(keep(version, run_dir, at))
            for process in processes:
                process.cpu_seconds()
            elapsed = _robot_seconds(t0, now, spec["pace"])
            if elapsed >= budget:
                break
            if shift_at is not None and shifted_at is None and elapsed >= shift_at:
                # The fleet moves to the new site: the actors' process ends its episodes in flight (a warm
                # shutdown) and a new one builds every scene shifted.
                actors = next(p for p in processes if p.name == "actors")
                actors.stop()
                shifted = dict(env, FLEET_SCENE_SHIFT=",".join(str(v) for v in spec["scene_shift"]))
                processes.append(Process.worker("actors-shifted", "actors", spec["robots"], shifted, log_dir,
                                                prefix="experiment"))
                shifted_at = _robot_seconds(t0, datetime.now(dt_timezone.utc), spec["pace"])
                say(f"{shifted_at / 60:5.1f} robot-min: the fleet moved to the shifted scenes")
            if time.monotonic() >= next_report:
                next_report += 60
                say(f"{elapsed / 60:5.1f} robot-min: {len(seen)} versions published")
            connection.close()
            time.sleep(min(1.0, max(0.05, (budget - elapsed) / spec["pace"])))
        t_end = now
        # The newest version at the end of the clock is evaluated too (it is what the fleet ran last).
        final = PolicyVersion.objects.filter(created_at__lte=t_end).order_by("-number").first()
        if final.number != base.number and all(k["number"] != final.number for k in kept):
            kept.append(keep(final, run_dir, _robot_seconds(t0, final.created_at, spec["pace"])))
        TrainingRun.objects.get(pk=run.pk).stop(reason="the experiment's clock ran out")
        for robot in Robot.objects.all():
            control.stop(robot, None, reason="experiment's clock ran out")
    finally:
        cpu = {p.name: p.cpu_seconds() for p in processes}
        for process in processes:
            process.stop()
    return {"t0": t0, "t_end": t_end, "run": run.pk, "kept": kept, "cpu_seconds": cpu,
            "versions_published": len(seen), "shifted_at": shifted_at}


def accounting(spec: dict, phase: dict) -> dict:
    """What the run spent and what the clock achieved, from the run's own tables (episodes finished and learner
    metrics written while the clock ran)."""
    from fleet.models import Episode
    from fleet.sim.envs import CONTROL_DT
    from learner.models import TrainingMetric

    t0, t_end, pace = phase["t0"], phase["t_end"], spec["pace"]
    robot_seconds = _robot_seconds(t0, t_end, pace)
    episodes = list(Episode.objects.filter(source=Episode.Source.ONLINE, finished_at__gte=t0,
                                           finished_at__lte=t_end)
                    .values("steps", "intervention_steps", "outcome", "started_at", "finished_at"))
    stepped = sum(e["steps"] for e in episodes) * CONTROL_DT
    lasted = sum((e["finished_at"] - e["started_at"]).total_seconds() for e in episodes)
    pace_achieved = stepped / lasted / pace if lasted else 0.0
    steps = (TrainingMetric.objects.filter(run_id=phase["run"], created_at__lte=t_end)
             .order_by("-step").values_list("step", flat=True).first() or 0)
    rate_achieved = steps / (spec["learner_rate"] * robot_seconds) if robot_seconds else 0.0
    problems = []
    if pace_achieved < 1 - VALID_WITHIN:
        problems.append(f"robots ran at {100 * pace_achieved:.0f} % of their declared pace")
    if rate_achieved < 1 - VALID_WITHIN:
        problems.append(f"the learner reached {100 * rate_achieved:.0f} % of its declared steps per robot-second")
    # Robot time the fleet spent in episodes: what is left went to resets, uploads and plans.
    duty = stepped / pace / (spec["robots"] * (t_end - t0).total_seconds()) if t_end > t0 else 0.0
    series = []
    bin_seconds = max(5.0, robot_seconds / 20)
    for start in (i * bin_seconds for i in range(int(robot_seconds // bin_seconds))):
        window = [e for e in episodes
                  if start <= _robot_seconds(t0, e["finished_at"], pace) < start + bin_seconds]
        steps_in = sum(e["steps"] for e in window)
        autonomous = sum(1 for e in window if e["outcome"] == "success" and e["intervention_steps"] == 0)
        hours = min(bin_seconds, robot_seconds - start) * spec["robots"] / 3600
        series.append({"robot_seconds": start + min(bin_seconds, robot_seconds - start) / 2,
                       "episodes": len(window),
                       "autonomous_successes_per_robot_hour": autonomous / hours if hours else 0.0,
                       "intervention_rate": sum(e["intervention_steps"] for e in window) / steps_in
                       if steps_in else 0.0})
    return {
        "robot_seconds": robot_seconds,
        "clock": {"pace_declared": pace, "pace_achieved": pace_achieved,
                  "learner_rate_declared": spec["learner_rate"], "learner_rate_achieved": rate_achieved,
                  "duty": duty, "valid": not problems, "problems": problems},
        "budget": {"robot_steps": sum(e["steps"] for e in episodes),
                   "expert_steps": sum(e["intervention_steps"] for e in episodes),
                   "online_episodes": len(episodes), "learner_steps": steps},
        "series": series,
    }


def _evaluate_one(path: str, sha256: str, task: str, episodes: int, scene_shift=None,
                  guidance=None) -> tuple[int, int]:
    """One kept version on one task's held-out seeds (a pool process: Django-free)."""
    from learner.evaluation import evaluate
    from learner.policy import load_checkpoint

    shift = tuple(scene_shift) if scene_shift else None
    score = evaluate(load_checkpoint(Path(path), sha256), [task], episodes, scene_shift=shift,
                     guidance=guidance)[task]
    return score.successes, score.episodes


def _mean_rate(scores: dict, tasks: list[str]) -> float:
    return statistics.mean(scores[t]["successes"] / scores[t]["episodes"] for t in tasks)


def evaluate_kept(spec: dict, kept: list[dict], workers: int) -> list[dict]:
    """Every kept version, policy alone, on `eval_episodes` held-out seeds per task (the same seeds for every
    version and run: learner.evaluation.held_out_seeds)."""
    import multiprocessing

    # (version, condition, task, shift, beta): every task on the training scenes; with a shift, the online tasks on
    # the new ones; with RECAP's guidance, the last version at each beta.
    conditions = [("tasks", task, None, None) for task in spec["tasks"]]
    if spec["scene_shift"]:
        conditions += [("shifted", task, spec["scene_shift"], None) for task in spec["online_tasks"] or spec["tasks"]]
    work = [(version, *condition) for version in kept for condition in conditions]
    work += [(kept[-1], f"beta={beta:g}", task, None, beta) for beta in spec["guidance"] for task in spec["tasks"]]
    def key(item):  # (version number, condition, task)
        return item[0]["number"], item[1], item[2]

    if workers == 1 or len(work) * spec["eval_episodes"] <= 50:  # a pool's start (torch and Meta-World imported
        results = {key(w): _evaluate_one(w[0]["path"], w[0]["sha256"], w[2], spec["eval_episodes"], w[3], w[4])
                   for w in work}                                # again) would cost more than it saves
    else:
        # Spawned, not forked: this process has run torch (pretraining), and a forked child can hang in its locks.
        # A pool that ends early (the run was stopped) terminates its workers rather than finishing their queue.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pending = {key(w): pool.apply_async(_evaluate_one, (w[0]["path"], w[0]["sha256"], w[2],
                                                                spec["eval_episodes"], w[3], w[4])) for w in work}
            results = {k: result.get() for k, result in pending.items()}
    evaluations = []
    for version in kept:
        entry = {k: version[k] for k in ("number", "train_steps", "robot_seconds")}
        for (number, condition, task), (successes, episodes) in results.items():
            if number == version["number"]:
                entry.setdefault(condition, {})[task] = {"successes": successes, "episodes": episodes}
        # The headline: mean autonomous success over the tasks the fleet runs online, on the training scenes; with
        # a shift, also on the new site's scenes, and the tasks never run online (the skills to be kept).
        online = spec["online_tasks"] or spec["tasks"]
        entry["success"] = _mean_rate(entry["tasks"], online)
        if spec["scene_shift"]:
            entry["success_shifted"] = _mean_rate(entry["shifted"], online)
            if kept_tasks := [t for t in spec["tasks"] if t not in online]:
                entry["success_not_online"] = _mean_rate(entry["tasks"], kept_tasks)
        if guided := {key: _mean_rate(entry[key], online) for key in entry if key.startswith("beta=")}:
            entry["success_guided"] = guided
        evaluations.append(entry)
    return evaluations


def execute(spec: dict, resolved: dict, repeat: int, run_dir: Path, say=print) -> dict:
    """The whole run; returns its record (the JSON the cache keeps and the report reads)."""
    from django.conf import settings

    from core import bus
    from learner.models import PolicyVersion

    started = time.monotonic()
    wall = {}
    bus.client().flushdb()  # the run's own Redis database: queues and leases of an earlier run are gone
    base_demos, base_steps = set_up(spec, resolved)
    base = PolicyVersion.deployed()
    kept = [keep(base, run_dir, 0.0)]
    wall["set_up"] = time.monotonic() - started
    record = {"spec": spec, "resolved": resolved, "repeat": repeat, "demos_per_task": base_demos,
              "base_steps": base_steps, "base_version": base.number}
    if spec["online"]:
        phase_start = time.monotonic()
        phase = fleet_phase(spec, run_dir, dict(os.environ), say)  # this process's environment is the run's own
        wall["fleet"] = time.monotonic() - phase_start
        kept += phase["kept"]
        record.update(accounting(spec, phase), cpu_seconds=phase["cpu_seconds"],
                      versions_published=phase["versions_published"], shifted_at=phase["shifted_at"])
    else:
        record.update(robot_seconds=0.0, clock={"valid": True, "problems": []}, series=[],
                      budget={"robot_steps": 0, "expert_steps": 0, "online_episodes": 0, "learner_steps": 0},
                      versions_published=0)
    record["budget"]["demonstrations"] = base_demos * len(spec["tasks"])
    record["budget"]["pretraining_steps"] = base_steps
    eval_start = time.monotonic()
    record["evaluations"] = evaluate_kept(spec, kept, settings.EXPERIMENTS_EVAL_WORKERS)
    wall["evaluation"] = time.monotonic() - eval_start
    wall["total"] = time.monotonic() - started
    record["budget"]["wall_seconds"] = wall
    record["finished"] = datetime.now(dt_timezone.utc).isoformat(timespec="seconds")
    return record
