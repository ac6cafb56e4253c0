"""Episodes per second uploaded through the robot API (PUT /api/v1/episodes/{uuid} on the real web process, 8
concurrent clients, each its own remote robot and token) against in-process `ingest_episode` of the same episodes,
in the same run, interleaved. Goal: ratio >= 0.5.

The episode is a real 500-step pick-place episode from the simulator (the gate makes the expert step in), the
payload the robot client would upload. The API path pays what a remote robot costs the server: HTTP, the token,
the rate limit, reading the upload strictly (its zip directory, then inflating it) and the trust checks; the
in-process path starts from arrays in memory.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/api_ingest.py [--episodes 200] [--reps 3]
        [--workers N]   (the web process's workers; default 2, the Procfile's)
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import _django

_django.setup("_api_bench")

import numpy as np  # noqa: E402
from django.utils import timezone  # noqa: E402

from fleet import control  # noqa: E402
from fleet.ingest import ingest_episode  # noqa: E402
from fleet.models import Episode, Robot, Task  # noqa: E402
from fleet.sim import episode_data  # noqa: E402
from fleet.sim.actor import run_episode  # noqa: E402
from fleet.sim.envs import make_task  # noqa: E402
from fleet.sim.gate import Gate, GateConfig  # noqa: E402
from gateway import credentials  # noqa: E402
from learner.models import PolicyVersion  # noqa: E402

CLIENTS = 8


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _web_cpu_seconds(pid: int) -> float:
    """The web process and its workers (its session's processes)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == pid:
                    total += _cpu_seconds(int(entry))
            except (OSError, ValueError):
                continue
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the web process's workers (Procfile default: 2)")
    args = parser.parse_args()

    Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=500)
    version = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="policies/none",
                                           checkpoint_sha256="0" * 64, state="deployed")
    robots, tokens = [], []
    for i in range(CLIENTS):
        robot = control.add(f"bench-remote-{i}", list(Task.objects.all()), None, kind=Robot.Kind.REMOTE)
        control.assign_version(robot, version, None, reason="benchmark")
        robots.append(robot)
        tokens.append(credentials.issue(robot, None)[1])
    sim = make_task("pick-place-v3")
    result = run_episode(sim, lambda obs: np.zeros(4, np.float32), 3,
                         Gate(GateConfig(no_progress_steps=150, divergence=10.0, min_hold_steps=40)), realtime_factor=0)
    arrays, payload = result.arrays, episode_data.encode(result.arrays)
    print(f"episode: {result.steps} steps, {result.outcome}, payload {len(payload) / 1024:.0f} KiB")
    server, address = _django.start_web("api-ingest", args.workers, API_RATE_LIMIT=1_000_000)


    def params():
        now = timezone.now()
        return {"task": "pick-place-v3", "seed": 7, "outcome": result.outcome, "version": 1,
                "started_at": (now - timedelta(seconds=6)).isoformat(), "finished_at": now.isoformat()}

    def in_process(n):
        now = timezone.now()
        start = time.perf_counter()
        for i in range(n):
            ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=7, outcome=result.outcome, arrays=arrays,
                           started_at=now - timedelta(seconds=6), finished_at=now, robot_id=robots[i % CLIENTS].pk,
                           policy_version_id=version.pk, source=Episode.Source.ONLINE)
        return n / (time.perf_counter() - start)

    def over_api(n):
        failures = []

        def client(k):
            # http.client rather than httpx: the clients share this machine's cores with the server, and a robot's
            # own HTTP stack runs on the robot; the lighter client leaves the cores to what is measured.
            host, port = address.split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            headers = {"Authorization": f"Bearer {tokens[k]}", "Content-Type": "application/octet-stream"}
            for _ in range(k, n, CLIENTS):
                connection.request("PUT", f"/api/v1/episodes/{uuid.uuid4()}?{urlencode(params())}", body=payload,
                                   headers=headers)
                response = connection.getresponse()
                body = response.read()
                if response.status != 201:
                    failures.append(body[:200])
            connection.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        if failures:
            sys.exit(f"{len(failures)} uploads failed, e.g. {failures[0]}")
        return n / elapsed

    try:
        # Warm up connections, caches, the server's imports and every worker's threads: the first requests a
        # worker serves cost it several times the steady state's CPU.
        in_process(50), over_api(40 * args.workers)
        ratios, apis, locals_ = [], [], []
        for rep in range(args.reps):  # interleaved, so drift on a noisy machine hits both alike
            local = in_process(args.episodes)
            cpu_before = _web_cpu_seconds(server.pid)
            clients_before = time.process_time()
            api = over_api(args.episodes)
            server_ms = (_web_cpu_seconds(server.pid) - cpu_before) / args.episodes * 1000
            client_ms = (time.process_time() - clients_before) / args.episodes * 1000
            locals_.append(local), apis.append(api), ratios.append(api / local)
            print(f"rep {rep + 1}: in-process {local:6.1f}/s   API, {CLIENTS} clients, {args.workers} web "
                  f"worker(s) {api:6.1f}/s   "
                  f"ratio {api / local:.3f}   (CPU per upload: web {server_ms:.1f} ms, clients {client_ms:.1f} ms; "
                  f"in-process {1000 / local:.1f} ms)")
        print(f"median: in-process {_django.median(locals_):.1f} episodes/s, API {_django.median(apis):.1f} "
              f"episodes/s ({Episode.objects.count()} episodes stored)")
        print(f"API/in-process ratio: {_django.median(ratios):.3f}")
    finally:
        _django.stop_web(server)


if __name__ == "__main__":
    main()
