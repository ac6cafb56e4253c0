"""Soak: the fleet-facing system under a steady load for a long time — 16 simulated robots at real-time pace and 50
people's dashboards — reporting errors (goal 0), lost episodes (goal 0), and the resident memory growth of the web
and worker processes between minute 5 and the end (goal <= 10 %; the last line, in percent).

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/soak.py [--minutes 30 | --quick]
        [--robots 16] [--viewers 50]

What runs, on a private database (`<name>_soak`), a private Redis database (REDIS_DB) and a private episode outbox
(var/soak/outbox), the last two emptied at the start: the web process as deployed (`python -m sopweb.web`'s uvicorn,
WEB_CONCURRENCY workers, default 2), the Procfile's `actors` worker with one pool process per robot
(ACTOR_CONCURRENCY set to the fleet's size, as a deployment does: fewer would leave robots queued and silent), its
`default`, `control` and `background` workers, and beat with its sweeps, render-ahead and governance checks. Not the
learner: it has soaks of its own (bench/learning.py, bench/learner_under_load.py), its buffer grows by design until
it is full, and on two cores it would take the CPU the robots need. The robots run an untrained policy deployed to
the fleet (the expert gate takes over where it flounders): this is about the plumbing, not about learning. They run
at FLEET_REALTIME_FACTOR=1; the achieved pace is printed. The viewers (bench/_viewers.py, a process of their own)
each hold a logged-in session of their own, load the fleet page, open its socket and read every message, and fetch
the page or its snapshot every 30 s, as 50 people with the page open would.

The clock starts once every robot runs: each fresh actor process first imports torch and Meta-World (about 2.5 s of
CPU each, half a minute for sixteen on two cores, longer on a loaded machine). The warm-up counts for errors and
episodes like the rest, except that a quiet socket or a robot marked offline counts only once the clock runs. At
the end the robots are stopped, each finishes its running episode, and the processes are stopped after that.

Errors, each kind counted and printed (the goal is 0 of every kind):
- dashboards: sockets the server closed or that broke, failed handshakes, sockets silent for 15 s while the robots
  ran, HTTP answers other than 200 (or none), and live events missed: every episode stored while a socket was open
  must reach it once (counted over the sockets that never dropped; bench/_viewers.py);
- processes: ERROR, CRITICAL and Traceback lines in the logs of the web process, every worker and beat (var/soak/),
  up to the moment they are stopped: a task that raised or hit its time limit, a pool process that died, a request
  that failed with a 5xx;
- robots and episodes that failed for the infrastructure's sake: an `aborted` episode (nobody pauses a robot here,
  so its actor lost its lease: it stalled for FLEET_LEASE_SECONDS), a robot the sweep marked offline (silent for
  FLEET_HEARTBEAT_TIMEOUT) while the clock ran, a robot that stored no episode at all. A robot marked offline during
  the warm-up (started, but its actor process has not reached its first episode after FLEET_HEARTBEAT_TIMEOUT) is
  printed, not counted: it comes back with its first episode.

Lost episodes: every episode a robot finished must be in PostgreSQL exactly once. What the robots finished is
counted without the database, by the actors themselves: each online episode an actor starts increments the robot's
Redis counter (bus.episode_counter_key, which picks its next task) before it runs. Once the stopped robots hold no
lease and have no episode queued, every started episode has ended, so started - stored, per robot, is what was lost
(an episode aborted before its first step stores nothing and would count as lost too: nothing here aborts one; an
episode kept on the actor's disk because the database was away is not in PostgreSQL either, and is counted and named
apart). A second count comes from the actors' logs: the line an actor writes for each episode it stored ("stored
episode <uuid> of robot ..."), compared UUID by UUID with the rows. Exactly once: more stored than started, a
repeated UUID (the schema forbids it; counted anyway), or two episodes of one robot overlapping in time (two actors
running one robot) count as stored more than once.

Memory: the resident set (RSS) of each process tree — the web process with its uvicorn workers, each Celery worker
with its pool processes, beat — leaving out the ffmpeg encoders a render starts and ends, every SAMPLE_SECONDS (all
kept in var/soak/memory.json). Growth = (RSS at the end - RSS at the baseline) / RSS at the baseline, for the sum
(the last line) and per process; each point is the median of the samples within 15 s of it. The sum is nine tenths
actor processes (each counts the torch and MuJoCo pages it shares with its siblings), so a leak in the web process
or a small worker shows in its own line long before it moves the sum. The baseline is minute 5, or 40 % of the run
if that is earlier (quick mode: 48 s into 2 minutes, which may still hold warm-up: a noisy figure, and the output
says so). The bench prints its figures and exits 0 when it ran (non-zero when it could not: viewers that could not
connect, robots that never ran); tests/test_soak.py asserts the goals.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REDIS_DB = 13  # the soak's own Redis database: flushed at its start, so no queue, lease or counter survives a run
SAMPLE_SECONDS = 10.0
QUICK_MINUTES = 2.0
BASELINE_MINUTE = 5.0
BASELINE_SHARE = 0.4  # of a run shorter than BASELINE_MINUTE / BASELINE_SHARE minutes
WARM_UP_LIMIT = 300.0  # seconds for every robot to run: a robot that never does is a failure, not a figure
ROOT = Path(__file__).resolve().parent.parent
OUTBOX = ROOT / "var" / "soak" / "outbox"


def private_services() -> None:
    """Point this process and every process it starts at the soak's own Redis database and episode outbox."""
    from sopweb import embedded

    url = os.environ.get("REDIS_URL") or embedded.read_state().get("REDIS_URL")
    if not url:
        sys.exit("no Redis: run under `python -m sopweb.embedded run --` or set REDIS_URL")
    os.environ["REDIS_URL"] = urlunsplit(urlsplit(url)._replace(path=f"/{REDIS_DB}"))
    os.environ["FLEET_OUTBOX_DIR"] = str(OUTBOX)


sys.path.insert(0, str(ROOT))
private_services()

import _django  # noqa: E402

_django.setup("_soak")
logging.getLogger().setLevel(logging.WARNING)  # not a line per viewer's login

import psutil  # noqa: E402
from _system import Process, system_env, wait_until  # noqa: E402,I001
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from actors import outbox  # noqa: E402
from core import bus  # noqa: E402
from core.models import AuditEvent  # noqa: E402
from fleet import control  # noqa: E402
from fleet.models import Episode, Robot, Task  # noqa: E402
from fleet.sim.envs import CONTROL_DT  # noqa: E402
from learner.models import publish_version  # noqa: E402
from learner.policy import MLPPolicy, PolicyConfig  # noqa: E402
from learner.signals import version_published  # noqa: E402

LOG_DIR = OUTBOX.parent
REDIS = "redis"  # its key among the memory samples
WORKERS = ("actors", "default", "control", "background")
PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback ")
STORED = re.compile(r"stored episode ([0-9a-f-]{36}) of robot ")  # actors.runner's line for each stored episode


def seed_fleet(robots: int, viewers: int) -> tuple[list[Robot], list[str]]:
    """The default tasks, an untrained policy deployed to the fleet, `robots` robots (stopped), and `viewers`
    operators, each logged in once: their Cookie header values."""
    import torch

    tasks = [Task.objects.create(env_name=name, title=name) for name in settings.FLEET_TASKS]
    torch.manual_seed(0)
    names = [task.env_name for task in tasks]
    version = publish_version(MLPPolicy(PolicyConfig(tasks=names)), algorithm="bc",
                              config={"init": "random", "seed": 0, "tasks": names})
    version_published.send(sender=type(version), version=version, deploy=True, reason="soak")
    fleet = [control.add(f"soak-{i + 1:02d}", tasks) for i in range(robots)]
    operators = Group.objects.get(name="operators")
    cookies = []
    for i in range(viewers):
        user = User.objects.create_user(f"viewer-{i + 1:02d}")
        user.groups.add(operators)
        client = Client()
        client.force_login(user)
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}")
    return fleet, cookies


class System:
    """The product's processes (web, workers, beat) and the viewers, their logs and their resident memory."""

    def __init__(self, robots: int):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        env = system_env(FLEET_REALTIME_FACTOR=1.0)
        self.workers = [Process.worker(name, env, LOG_DIR, concurrency=robots if name == "actors" else None)
                        for name in WORKERS]
        self.beat = Process.beat(env, LOG_DIR)
        self.web, self.address = _django.start_web("soak", workers=int(os.environ.get("WEB_CONCURRENCY") or 2),
                                                   FLEET_REALTIME_FACTOR=1.0)
        self.logs = {"web": _django.ROOT / "var" / "bench-soak-web.log",
                     **{w.name: LOG_DIR / f"{w.name}.log" for w in self.workers}, "beat": LOG_DIR / "beat.log"}
        self.pids = {"web": self.web.pid, **{w.name: w.proc.pid for w in self.workers}, "beat": self.beat.proc.pid}
        self.log_ends: dict[str, int] = {}
        self.viewers: subprocess.Popen | None = None

    def connect_viewers(self, cookies: list[str]) -> None:
        for worker in self.workers:
            wait_until(lambda: b"ready." in self.logs[worker.name].read_bytes(), 180, f"the {worker.name} worker")
        (LOG_DIR / "cookies.json").write_text(json.dumps(cookies))
        with open(LOG_DIR / "viewers.log", "wb") as log:
            self.viewers = subprocess.Popen([sys.executable, str(_django.ROOT / "bench" / "_viewers.py"),
                                             self.address, str(LOG_DIR / "cookies.json")], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        answer = self.viewers.stdout.readline().strip()
        if answer != "READY":
            raise SystemExit(f"the viewers did not all connect: {answer or 'no answer'} (var/soak/viewers.log)")

    def tell_viewers(self, line: str) -> None:
        self.viewers.stdin.write(line + "\n")
        self.viewers.stdin.flush()

    def memory(self) -> dict[str, int]:
        """Resident bytes per process tree, and Redis's own used memory (a queue or keys piling up show there)."""
        return {**{name: tree_rss(pid) for name, pid in self.pids.items()},
                REDIS: bus.client().info("memory")["used_memory"]}

    def stop(self) -> None:
        self.log_ends = {name: path.stat().st_size for name, path in self.logs.items() if path.exists()}
        if self.viewers is not None and self.viewers.poll() is None:
            self.viewers.kill()
        _django.stop_web(self.web)
        for process in [*self.workers, self.beat]:
            process.stop()

    def log_problems(self) -> dict[str, list[str]]:
        """Per process, its ERROR / CRITICAL / Traceback lines written before it was told to stop."""
        problems = {}
        for name, end in self.log_ends.items():
            with open(self.logs[name], "rb") as log:
                text = log.read(end).decode(errors="replace")
            problems[name] = [line for line in text.splitlines() if PROBLEM.search(line)]
        return problems


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants, ffmpeg encoders left out (a render's: gone when it ends)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            if "ffmpeg" not in process.name():
                total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass  # exited meanwhile
    return total


def settled(robot_ids: list[int]) -> bool:
    """No robot holds a lease (an episode runs) or has an episode queued."""
    r = bus.client()
    return not any(r.exists(bus.lease_key(pk), bus.scheduled_key(pk)) for pk in robot_ids)


def run(system: System, robots: list[Robot], seconds: float) -> tuple[list[tuple[float, dict]], dict]:
    """Start the robots, run for `seconds` sampling memory, stop the robots and let them finish. Returns the
    memory samples (seconds into the run, RSS per process) and the run's times."""
    robot_ids = [robot.pk for robot in robots]
    for robot in robots:
        control.start(robot, None, reason="soak")
    warming = time.monotonic()
    wait_until(lambda: Robot.objects.filter(pk__in=robot_ids, last_heartbeat__isnull=False).count() == len(robots),
               WARM_UP_LIMIT, "every robot to run")
    system.tell_viewers("watch")
    started, clock_at = time.monotonic(), timezone.now()
    print(f"every robot runs after {started - warming:.0f} s (the actor processes' warm-up); the clock starts")
    samples: list[tuple[float, dict]] = []
    next_report = 60.0
    while (elapsed := time.monotonic() - started) < seconds:
        samples.append((elapsed, system.memory()))
        if elapsed >= next_report:
            next_report += 60
            print(f"{elapsed / 60:5.1f} min: {Episode.objects.count():,} episodes, RSS "
                  f"{(sum(samples[-1][1].values()) - samples[-1][1][REDIS]) / 2**20:,.0f} MiB")
            connection.close()
        time.sleep(min(SAMPLE_SECONDS, max(0.0, seconds - (time.monotonic() - started))))
    samples.append((time.monotonic() - started, system.memory()))
    times = {"ran": time.monotonic() - started, "clock_at": clock_at, "stopping_at": timezone.now()}

    system.tell_viewers("drain")
    for robot in robots:
        control.stop(robot, None, reason="soak over")
    wait_until(lambda: settled(robot_ids), 300, "the robots' last episodes")
    times["drained"] = time.monotonic() - started - times["ran"]
    return samples, times


def main():
    sys.stdout.reconfigure(line_buffering=True)  # a run stopped early still shows how far it got
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the robots and viewers run")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MINUTES:g} minutes (the test suite's run)")
    parser.add_argument("--robots", type=int, default=16)
    parser.add_argument("--viewers", type=int, default=50)
    args = parser.parse_args()
    minutes = QUICK_MINUTES if args.quick else args.minutes

    bus.client().flushdb()
    shutil.rmtree(OUTBOX, ignore_errors=True)
    robots, cookies = seed_fleet(args.robots, args.viewers)
    system = System(args.robots)
    try:
        system.connect_viewers(cookies)
        print(f"{args.viewers} viewers connected to the web process at {system.address}; process trees: "
              f"{', '.join(system.pids)}")
        samples, times = run(system, robots, minutes * 60)
        system.tell_viewers(f"stop {Episode.objects.count()}")
        summary = system.viewers.stdout.readline()
        if not summary:
            raise SystemExit("the viewers ended without their counts (var/soak/viewers.log)")
        watched = json.loads(summary)
    finally:
        system.stop()
    robot_ids = [robot.pk for robot in robots]
    print(f"{args.robots} robots at real-time factor 1 and {args.viewers} viewers for {times['ran'] / 60:.1f} min "
          f"(then {times['drained']:.0f} s for the robots' last episodes)")
    report_episodes(system, robot_ids, times["ran"])
    report_errors(system, robot_ids, watched, times["clock_at"], times["stopping_at"])
    report_memory(samples, minutes)
    (LOG_DIR / "memory.json").write_text(json.dumps(samples))  # every sample, for a plot of a leak's slope


def report_episodes(system: System, robot_ids: list[int], ran: float) -> None:
    r = bus.client()
    episodes = Episode.objects.filter(robot_id__in=robot_ids)
    stored = dict(episodes.values_list("robot_id").annotate(n=Count("id")))
    started = {pk: int(r.get(bus.episode_counter_key(pk)) or 0) for pk in robot_ids}
    lost = sum(max(0, started[pk] - stored.get(pk, 0)) for pk in robot_ids)
    extra = sum(max(0, stored.get(pk, 0) - started[pk]) for pk in robot_ids)
    total = sum(stored.values())
    with open(system.logs["actors"], "rb") as log:
        logged = set(STORED.findall(log.read(system.log_ends["actors"]).decode(errors="replace")))
    rows = {str(key) for key in episodes.values_list("uuid", flat=True)}
    absent = len(logged - rows)
    kept = len(outbox.pending())
    uuids = len(rows)
    overlaps = overlapping(robot_ids)
    steps = sum(episodes.values_list("steps", flat=True))
    wall = sum(float(meta.get("wall_seconds", 0)) for meta in episodes.values_list("meta", flat=True))
    print(f"episodes: {total:,} stored ({total / ran * 60:,.0f}/min over the measured run), {steps:,} robot steps; "
          f"pace {steps * CONTROL_DT / wall if wall else 0:.2f} x real time while an episode runs")
    print(f"robot-side count: {sum(started.values()):,} started (the actors' Redis counters), {len(logged):,} "
          f"stored by the actors' own account (their log); in PostgreSQL {total:,}")
    print(f"lost episodes: {max(lost, absent)} (started but not in PostgreSQL: {lost}, of which kept on an "
          f"actor's disk for want of the database: {kept}; logged as stored but not in PostgreSQL: {absent})")
    print(f"episodes stored more than once: {extra + (total - uuids) + overlaps} (more stored than started: "
          f"{extra}; repeated UUIDs: {total - uuids}; overlapping the same robot's previous episode: {overlaps})")


def overlapping(robot_ids: list[int]) -> int:
    """Episodes that start before the previous episode of the same robot finished."""
    count = 0
    for pk in robot_ids:
        spans = list(Episode.objects.filter(robot_id=pk).order_by("started_at")
                     .values_list("started_at", "finished_at"))
        count += sum(1 for (_, end), (start, _) in zip(spans, spans[1:]) if start < end)
    return count


def report_errors(system: System, robot_ids: list[int], watched: dict, clock_at, stopping_at) -> None:
    episodes = Episode.objects.filter(robot_id__in=robot_ids)
    heard = {int(pk): n for pk, n in watched["heard"].items()}
    ids = set(episodes.values_list("id", flat=True))
    missed = sum(watched["steady"] - heard.get(pk, 0) for pk in ids) + len(set(heard) - ids) + watched["repeated"]
    problems = system.log_problems()
    offline = AuditEvent.objects.filter(verb="robot.offline")
    errors = {
        "sockets dropped": len(watched["drops"]), "handshakes failed": len(watched["connect"]),
        "sockets silent": len(watched["silence"]), "HTTP failures": len(watched["http"]),
        "live events missed": missed,
        "log lines (ERROR, CRITICAL, Traceback)": sum(len(lines) for lines in problems.values()),
        "episodes aborted (lease lost)": episodes.filter(outcome=Episode.Outcome.ABORTED).count(),
        "robots marked offline": offline.filter(created_at__gte=clock_at, created_at__lt=stopping_at).count(),
        "robots that stored no episode": len(set(robot_ids) - set(episodes.values_list("robot_id", flat=True))),
    }
    print(f"viewers: {watched['messages']:,} socket messages, {watched['http_ok']:,} pages and snapshots fetched "
          f"(200), {watched['steady']} of {watched['viewers']} sockets never dropped, longest quiet socket "
          f"{watched['longest_gap']:.1f} s")
    for kind in ("drops", "connect", "silence", "http"):
        for line in watched[kind][:5]:
            print(f"  {kind}: {line}")
    for name, lines in problems.items():
        for line in lines[:5]:
            print(f"  {name} log: {line}")
    if warming := offline.filter(created_at__lt=clock_at).count():
        print(f"  robots marked offline while the actor processes warmed up (not counted: they had not answered "
              f"yet, and came back with their first episode): {warming}")
    print("errors by kind: " + ", ".join(f"{kind} {n}" for kind, n in errors.items()))
    print(f"errors: {sum(errors.values())}")


def report_memory(samples: list[tuple[float, dict]], minutes: float) -> None:
    baseline_at = min(BASELINE_MINUTE * 60, BASELINE_SHARE * minutes * 60)
    end = samples[-1][0]
    if baseline_at == BASELINE_MINUTE * 60:
        when = f"minute {BASELINE_MINUTE:g}"
    else:
        when = (f"{baseline_at:.0f} s, {BASELINE_SHARE:.0%} of a {minutes:g}-minute run (minute {BASELINE_MINUTE:g} "
                f"from {BASELINE_MINUTE / BASELINE_SHARE:g} minutes on; an early baseline may still hold warm-up, "
                f"so the figure is noisy)")
    before = {name: rss_near(samples, baseline_at, name) for name in samples[0][1]}
    after = {name: rss_near(samples, end, name) for name in samples[0][1]}
    redis = before.pop(REDIS), after.pop(REDIS)
    print(f"resident memory (RSS, process trees; medians of the samples within 15 s), baseline at {when}, end at "
          f"{end / 60:.1f} min:")
    for name in before:
        print(f"  {name:<10} {before[name] / 2**20:8,.0f} -> {after[name] / 2**20:8,.0f} MiB  "
              f"({growth(before[name], after[name]):+.1f} %)")
    print(f"  {'sum':<10} {sum(before.values()) / 2**20:8,.0f} -> {sum(after.values()) / 2**20:8,.0f} MiB")
    print(f"  (the Redis server's used memory, all its databases, not in the sum: {redis[0] / 2**20:,.1f} -> "
          f"{redis[1] / 2**20:,.1f} MiB)")
    print(f"memory growth: {growth(sum(before.values()), sum(after.values())):.1f} %")


def rss_near(samples: list[tuple[float, dict]], at: float, name: str) -> float:
    """The median of one process's samples within 15 s of `at` (seconds into the run)."""
    near = [rss[name] for t, rss in samples if abs(t - at) <= 15]
    return statistics.median(near or [min(samples, key=lambda s: abs(s[0] - at))[1][name]])


def growth(before: float, after: float) -> float:
    return 100 * (after - before) / before if before else 0.0


if __name__ == "__main__":
    main()
