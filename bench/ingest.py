"""Episodes per second through the ingestion path (validation, encoding, rows, payload, events) against a plain
one-row-per-transaction INSERT of the same payload bytes, in the same run. Goal: ratio >= 0.6.

The baseline's table stores its bytea the way the product's payload column does (EXTERNAL: PostgreSQL does not
try to compress bytes that are deflated already), so the ratio compares like with like. For reference it also
measures the same INSERT into a table with PostgreSQL's default storage, which spends about half of each insert
trying to compress these bytes, and prints that ratio too; the figure is the like-for-like one.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/ingest.py [--episodes 300] [--reps 5]

With `--producers N` (N > 1) it measures, in the same run: the plain INSERT with N producer processes at once, each
on its own database connection and committing each row (the naive baseline at its best: every core, no GIL); the
product's ingestion with N producer threads of one process, as a web process's upload threads are, whose INSERTs
group commit (fleet.group_commit) shares; and, for reference, the product's ingestion with N processes (nothing to
group: one caller per process). The last line is the group-commit ratio (issue 19's goal: >= 1.5).
"""
from __future__ import annotations

import argparse
import time
import uuid
from datetime import timedelta

import _django

_django.setup()

import numpy as np  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from fleet.ingest import ingest_episode  # noqa: E402
from fleet.models import Episode, Robot, Task  # noqa: E402
from fleet.sim import episode_data  # noqa: E402
from fleet.sim.actor import run_episode  # noqa: E402
from fleet.sim.envs import make_task  # noqa: E402
from fleet.sim.gate import Gate, GateConfig  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--producers", type=int, default=1)
    args = parser.parse_args()

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    robot = Robot.objects.create(name="bench-robot")
    sim = make_task("pick-place-v3")
    # A real 500-step episode: the gate makes the expert step in, as in the fleet.
    result = run_episode(sim, lambda obs: np.zeros(4, np.float32), 3, Gate(GateConfig(no_progress_steps=150, divergence=10.0, min_hold_steps=40)),
                         realtime_factor=0)
    arrays = result.arrays
    payload = episode_data.encode(arrays)
    print(f"episode: {result.steps} steps, payload {len(payload) / 1024:.0f} KiB compressed "
          f"({sum(a.nbytes for a in arrays.values()) / 1024:.0f} KiB raw)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'fleet_episodepayload'::regclass "
                       "AND attname = 'data'")
        storage = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}[cursor.fetchone()[0]]
        for table in ("bench_plain", "bench_plain_default"):
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} (id bigserial primary key, uuid uuid, task int, robot int, "
                           "seed bigint, steps int, outcome text, finished timestamptz, data bytea)")
        cursor.execute(f"ALTER TABLE bench_plain ALTER COLUMN data SET STORAGE {storage}")
    print(f"baseline: the payload column's storage, {storage}; reference: PostgreSQL's default, EXTENDED")

    def plain(n, table="bench_plain"):
        import psycopg

        now = timezone.now()
        connection.ensure_connection()
        start = time.perf_counter()
        # Autocommit: one INSERT, one transaction; the payload as a binary parameter and the statement prepared
        # once (as ingestion's is), the fastest plain way.
        with psycopg.Cursor(connection.connection) as cursor:
            for _ in range(n):
                cursor.execute(f"INSERT INTO {table} (uuid, task, robot, seed, steps, outcome, finished, data) "
                               "VALUES (%s, %s, %s, %s, %s, %s, %s, %b)",
                               [uuid.uuid4(), task.pk, robot.pk, 7, result.steps, "timeout", now, payload],
                               prepare=True)
        return n / (time.perf_counter() - start)

    def ingest(n):
        now = timezone.now()
        start = time.perf_counter()
        for _ in range(n):
            ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=7, outcome=result.outcome,
                           arrays=arrays, started_at=now - timedelta(seconds=6), finished_at=now,
                           robot_id=robot.pk, source=Episode.Source.ONLINE)
        return n / (time.perf_counter() - start)

    if args.producers > 1:
        return concurrent(args, plain, ingest)
    plain(20), plain(20, "bench_plain_default"), ingest(20)  # warm up connections and caches
    ratios, defaults, plains, ingests = [], [], [], []
    for rep in range(args.reps):  # interleaved, so drift on a noisy machine hits all alike
        p, d, i = plain(args.episodes), plain(args.episodes, "bench_plain_default"), ingest(args.episodes)
        plains.append(p), ingests.append(i), ratios.append(i / p), defaults.append(i / d)
        print(f"rep {rep + 1}: plain INSERT {p:7.1f}/s   ingest {i:7.1f}/s   ratio {i / p:.3f}   "
              f"(plain INSERT with default storage {d:7.1f}/s, ratio {i / d:.3f})")
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_plain, bench_plain_default")
    print(f"median: plain {_django.median(plains):.1f} episodes/s, ingest {_django.median(ingests):.1f} episodes/s")
    print(f"reference: ingest / plain INSERT with default storage: {_django.median(defaults):.3f}")
    print(f"ingest/plain ratio: {_django.median(ratios):.3f}")


def concurrent(args, plain, ingest) -> None:
    """Each path with args.producers forked processes at once (each reconnects), episodes split evenly; the time is
    from the common start to the last one's end."""
    import multiprocessing

    from django.db import connections

    def run(path, share: int, ready, start) -> None:
        connections.close_all()  # the parent's connection is not the child's
        path(1)  # connect and prepare the statements before the clock starts
        ready.release()
        start.wait()
        path(share)

    def measure(path) -> float:
        share = args.episodes // args.producers
        context = multiprocessing.get_context("fork")
        ready, start = context.Semaphore(0), context.Event()
        connections.close_all()
        children = [context.Process(target=run, args=(path, share, ready, start)) for _ in range(args.producers)]
        for child in children:
            child.start()
        for _ in children:
            ready.acquire()
        began = time.perf_counter()
        start.set()
        for child in children:
            child.join()
        assert all(child.exitcode == 0 for child in children), [child.exitcode for child in children]
        return share * args.producers / (time.perf_counter() - began)

    def threads_in_a_child(path, results) -> None:
        """`path` in args.producers threads of a child process (each its own connection), released together; the
        rate and group commit's mean group size go back through `results`. A child, so that no writer thread and
        its connection live in the process the other measurements fork from."""
        import threading

        from fleet import group_commit

        connections.close_all()
        share = args.episodes // args.producers
        barrier = threading.Barrier(args.producers + 1)

        def run():
            path(1)  # connect, prepare, start the writer before the clock starts
            barrier.wait()
            barrier.wait()
            path(share)
            connections.close_all()

        threads = [threading.Thread(target=run) for _ in range(args.producers)]
        for thread in threads:
            thread.start()
        barrier.wait()
        before = group_commit._writer.stats if group_commit._writer else group_commit.Stats()
        groups, episodes = before.groups, before.episodes
        began = time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        rate = share * args.producers / (time.perf_counter() - began)
        stats = group_commit._writer.stats if group_commit._writer else group_commit.Stats()
        results.put((rate, (stats.episodes - episodes) / max(1, stats.groups - groups)))

    def measure_threads(path) -> tuple[float, float]:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        results = context.Queue()
        connections.close_all()
        child = context.Process(target=threads_in_a_child, args=(path, results))
        child.start()
        rate, size = results.get(timeout=600)
        child.join()
        return rate, size

    ratios, alone = [], []
    for rep in range(args.reps):
        p, i = measure(plain), measure(ingest)
        g, size = measure_threads(ingest)
        ratios.append(g / p), alone.append(i / p)
        print(f"rep {rep + 1}: {args.producers} producers: plain INSERT (processes) {p:7.1f}/s   ingest, group "
              f"commit (threads) {g:7.1f}/s, {size:.1f} episodes per commit   ratio {g / p:.3f}   "
              f"(ingest in processes, nothing to group: {i:7.1f}/s, ratio {i / p:.3f})")
    with connections["default"].cursor() as cursor:
        cursor.execute("DROP TABLE bench_plain, bench_plain_default")
    print(f"reference: ingest in {args.producers} processes / plain INSERT: {_django.median(alone):.3f}")
    print(f"concurrent ({args.producers} producers) group-commit ingest/plain ratio: {_django.median(ratios):.3f}")


if __name__ == "__main__":
    main()
