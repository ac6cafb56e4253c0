"""Server time of the dashboard pages with 10^4, 10^5 and 10^6 episodes in the table (p50 / p95 over repeated
requests through Django's full request path: middleware, session, view, queries, template).

The episodes are a fleet's history at a steady pace (16 robots, 4 tasks, ~3 episodes/s, a new policy version
every 10 minutes, a fifth of them with an intervention), so the last hour holds as many episodes at every size and
only the table grows. They are bulk-loaded with the roll-up triggers off, then the roll-ups are rebuilt with the
same SQL function the migration uses. The baseline is the same page at 10^4 episodes, measured in the same run:
the ratio (p95 at 10^6 / p95 at 10^4) shows how cost grows with 100x the data. Goal: p95 <= 200 ms at 10^6 for
the fleet page and the breakdown, growth well under linear.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/dashboard_scale.py [--requests 40]
"""
from __future__ import annotations

import argparse
import time

import _django

_django.setup("_bench_scale")

from django.contrib.auth.models import Group, User  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from fleet.models import Robot, Task  # noqa: E402
from learner.models import PolicyVersion  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
SECONDS_PER_EPISODE = 0.3  # ~3 episodes/s from 16 robots
EPISODES_PER_VERSION = 2000  # a version every 10 minutes at that pace
TASKS = ("box-close-v3", "peg-insert-side-v3", "pick-place-v3", "shelf-place-v3")
PAGES = {
    "fleet page": "/fleet/",
    "breakdown, 24 h": "/fleet/breakdown/?window=24h",
    "breakdown, 30 days": "/fleet/breakdown/?window=30d",
    "episodes, one robot": "/episodes/?robot=sim-07",
    "episodes, failures of a task": "/episodes/?task=shelf-place-v3&outcome=timeout",
}


def load(total: int, robots: list[int], tasks: list[int], versions: list[int]) -> None:
    """Grow the table to `total` episodes: the older history is inserted before the existing episodes in time."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fleet_episode")
        have = cursor.fetchone()[0]
        if have >= total:
            return
        cursor.execute("ALTER TABLE fleet_episode DISABLE TRIGGER episode_rollup")
        # Episode i (0 = newest) finished i * SECONDS_PER_EPISODE seconds ago.
        cursor.execute(
            """
            INSERT INTO fleet_episode (uuid, robot_id, task_id, policy_version_id, source, seed, outcome, steps,
                                       total_return, intervention_steps, intervention_count, meta, started_at,
                                       finished_at, created_at)
            SELECT gen_random_uuid(), (%(robots)s::bigint[])[1 + i %% 16], (%(tasks)s::bigint[])[1 + (i / 16) %% 4],
                   (%(versions)s::bigint[])[1 + i / %(per_version)s], 'online', i,
                   CASE WHEN random() < 0.7 THEN 'success' ELSE 'timeout' END,
                   100 + (random() * 400)::int, random() * 100, CASE WHEN i %% 5 = 0 THEN 40 ELSE 0 END,
                   CASE WHEN i %% 5 = 0 THEN 1 ELSE 0 END, '{}',
                   t - interval '5 seconds', t, t
            FROM generate_series(%(first)s, %(last)s) AS i,
                 LATERAL (SELECT now() - i * %(pace)s * interval '1 second' AS t) AS at
            """,
            {"robots": robots, "tasks": tasks, "versions": versions, "per_version": EPISODES_PER_VERSION,
             "first": have, "last": total - 1, "pace": SECONDS_PER_EPISODE})
        cursor.execute(
            "INSERT INTO fleet_interventionsegment (episode_id, start_step, end_step, source) "
            "SELECT id, 20, 60, 'gate' FROM fleet_episode WHERE intervention_steps = 40 AND seed >= %s", [have])
        cursor.execute("ALTER TABLE fleet_episode ENABLE TRIGGER episode_rollup")
        cursor.execute("SELECT sopweb_rollup_rebuild()")
        cursor.execute("ANALYZE")


def measure(client: Client, url: str, requests: int) -> tuple[float, float]:
    client.get(url)  # warm: the first request pays for connections and template compilation
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return _django.percentile(times, 50), _django.percentile(times, 95)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()

    tasks = [Task.objects.create(env_name=name).pk for name in TASKS]
    robots = []
    for i in range(16):
        robot = Robot.objects.create(name=f"sim-{i:02d}", status=Robot.Status.RUNNING, enabled=True)
        robot.tasks.set(tasks)
        robots.append(robot.pk)
    count = SIZES[-1] // EPISODES_PER_VERSION + 1
    versions = [PolicyVersion.objects.create(number=count - k, algorithm="hg_dagger", checkpoint_path=f"bench/{k}",
                                             checkpoint_sha256="0" * 64).pk for k in range(count)]  # newest first
    Robot.objects.update(policy_version_id=versions[0])
    user = User.objects.create_user("bench-operator", password="x")
    user.groups.add(Group.objects.get(name="operators"))
    client = Client(HTTP_HOST="127.0.0.1")  # a host ALLOWED_HOSTS serves
    client.force_login(user)

    results: dict[str, dict[int, tuple[float, float]]] = {page: {} for page in PAGES}
    for size in SIZES:
        started = time.perf_counter()
        load(size, robots, tasks, versions)
        print(f"{size:>9,} episodes (loaded in {time.perf_counter() - started:.0f} s)")
        for page, url in PAGES.items():
            p50, p95 = measure(client, url, args.requests)
            results[page][size] = (p50, p95)
            print(f"    {page:<30} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")

    print()
    small, large = SIZES[0], SIZES[-1]
    for page in PAGES:
        growth = results[page][large][1] / results[page][small][1]
        print(f"{page:<30} p95 at 10^6: {results[page][large][1]:6.1f} ms; x{growth:.2f} of 10^4 for 100x data")
    worst = max(("fleet page", "breakdown, 24 h", "breakdown, 30 days"), key=lambda p: results[p][large][1])
    ratio = results[worst][large][1] / results[worst][small][1]
    print(f"slowest of fleet page / breakdown at 10^6 ({worst}): p95 {results[worst][large][1]:.1f} ms "
          f"(goal <= 200); growth ratio p95 10^6 / 10^4 (goal well under 100): {ratio:.2f}")


if __name__ == "__main__":
    main()
