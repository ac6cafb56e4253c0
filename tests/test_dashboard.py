"""The dashboard's data: roll-ups kept by the database, windows, the breakdown, filters, flags."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db.models import Count, Q, Sum
from django.urls import reverse

from core.models import AuditEvent
from fleet import dashboard
from fleet.ingest import ingest_episode
from fleet.models import ASSISTED_SUCCESS, AUTONOMOUS_SUCCESS, Episode, EpisodeRollup, InterventionSegment, Robot, Task
from review.models import EpisodeFlag, EpisodeLabel
from tests.conftest import publish_random_policy
from tests.factories import make_arrays

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def robots(db):
    return [Robot.objects.create(name=f"sim-{i}") for i in range(3)]


def raw_episode(task, robot=None, version=None, *, at, outcome="failure", steps=100, intervention_steps=0,
                source=Episode.Source.ONLINE, intervention_count=0):
    return Episode.objects.create(task=task, robot=robot, policy_version=version, source=source, seed=0,
                                  outcome=outcome, steps=steps, total_return=0, intervention_steps=intervention_steps,
                                  intervention_count=intervention_count,
                                  started_at=at - timedelta(seconds=5), finished_at=at)


def test_rollups_match_the_episodes_at_every_window(tasks, robots):
    """Random episodes over three days: any window's roll-up totals equal a direct count of the episodes."""
    version = publish_random_policy(1, ["pick-place-v3"])
    rng = random.Random(4)
    for _ in range(400):
        at = T0 + timedelta(seconds=rng.randrange(3 * 86400))
        sources = [rng.choice(["gate", "operator", "annotator"]) for _ in range(rng.randrange(3))]
        # Its gate and operator segments counted on the episode's row, as ingestion writes it.
        counted = sum(source != "annotator" for source in sources)
        episode = raw_episode(rng.choice(tasks), rng.choice(robots + [None]), rng.choice([version, None]), at=at,
                              outcome=rng.choice(["success", "failure", "timeout"]), steps=rng.randrange(1, 500),
                              source=rng.choice(["online", "online", "evaluation"]), intervention_count=counted,
                              # steps of any source, an uploaded "other" one included, without a counted segment
                              intervention_steps=counted or rng.choice([0, 0, 3]))
        for k, source in enumerate(sources):
            InterventionSegment.objects.create(episode=episode, start_step=k, end_step=k + 1, source=source)
    for _ in range(30):
        start = T0 + timedelta(minutes=rng.randrange(-60, 3 * 1440))
        end = start + timedelta(minutes=rng.randrange(1, 2 * 1440))
        episodes = Episode.objects.filter(finished_at__gte=start.replace(second=0), finished_at__lt=end,
                                          source="online")
        expected = episodes.aggregate(episodes=Count("id"), autonomous=Count("id", filter=AUTONOMOUS_SUCCESS),
                                      assisted=Count("id", filter=ASSISTED_SUCCESS),
                                      successes=Count("id", filter=Q(outcome="success")), steps=Sum("steps"))
        segments = InterventionSegment.objects.filter(episode__in=episodes, source__in=["gate", "operator"]).count()
        [got] = dashboard.totals(start, end)
        assert got["episodes"] == expected["episodes"]
        assert got["autonomous_successes"] == expected["autonomous"]
        assert got["assisted_successes"] == expected["assisted"]
        if expected["episodes"]:
            assert got["autonomous_successes"] + got["assisted_successes"] == expected["successes"]
        assert got["steps"] == (expected["steps"] or 0 if expected["episodes"] else None)
        assert got["interventions"] == (segments if expected["episodes"] else None)


def test_ingestion_rolls_up_once_even_when_retried(tasks, robots):
    arrays = make_arrays(success_at=30)  # two segments: gate and operator
    key = uuid.uuid4()
    for _ in range(2):
        ingest_episode(uuid=key, task="pick-place-v3", seed=1, outcome="success", arrays=arrays, robot_id=robots[0].pk,
                       started_at=T0, finished_at=T0 + timedelta(seconds=3))
    minute = EpisodeRollup.objects.get(size="m")
    hour = EpisodeRollup.objects.get(size="h")
    for row in (minute, hour):
        # The gate and an operator took over: a success, but an assisted one.
        assert (row.episodes, row.autonomous_successes, row.assisted_successes) == (1, 0, 1)
        assert (row.steps, row.interventions) == (50, 2)
        assert row.robot_id == robots[0].pk and row.task == tasks[0]
    assert minute.bucket == T0 and hour.bucket == T0
    Episode.objects.get(uuid=key).delete()
    assert set(EpisodeRollup.objects.values_list("episodes", "assisted_successes", "interventions")) == {(0, 0, 0)}


def test_the_breakdown_marks_the_one_bad_robot(tasks, robots):
    version = publish_random_policy(1, ["pick-place-v3"])
    for robot in robots:
        for i in range(40):
            bad = robot == robots[2]
            outcome = "success" if (i % 10 < (2 if bad else 9)) else "failure"
            raw_episode(tasks[0], robot, version, at=T0 + timedelta(minutes=i), outcome=outcome)
    table = dashboard.breakdown(T0, T0 + timedelta(hours=2))
    [v1] = table["versions"]
    assert v1["number"] == 1 and table["tasks"] == ["pick-place-v3"]
    marks = {line["robot"]: line["cells"][0]["mark"] for line in v1["robots"]}
    assert marks == {"sim-0": "better", "sim-1": "better", "sim-2": "worse"}  # each against the two others
    cell = v1["robots"][2]["cells"][0]
    assert (cell["successes"], cell["episodes"]) == (8, 40) and cell["low"] < 0.2 < cell["high"]
    assert v1["total"][0]["episodes"] == 120


def test_the_fleet_snapshot_has_tiles_kpis_and_series(tasks, robots, settings):
    from django.utils import timezone

    from core import bus

    now = timezone.now()
    for i in range(25):
        raw_episode(tasks[1], robots[0], at=now - timedelta(minutes=i), outcome="success" if i % 2 else "failure",
                    intervention_steps=5 if i == 0 else 0)
    raw_episode(tasks[0], robots[1], at=now - timedelta(minutes=90), outcome="success")
    import json
    import time

    bus.client().hset(bus.PROGRESS_KEY, mapping={
        robots[1].pk: json.dumps({"robot": robots[1].pk, "step": 120, "control": "expert", "at": time.time()}),
        robots[2].pk: json.dumps({"robot": robots[2].pk, "step": 7, "control": "policy", "at": time.time() - 60}),
    })
    snap = dashboard.fleet_snapshot(now + timedelta(seconds=1))
    tiles = {tile["name"]: tile for tile in snap["robots"]}
    assert len(tiles["sim-0"]["outcomes"]) == 20  # the last 20, oldest first
    assert tiles["sim-0"]["outcomes"][-1]["helped"] and tiles["sim-0"]["outcomes"][-1]["outcome"] == "failure"
    assert tiles["sim-1"]["progress"]["control"] == "expert"
    assert tiles["sim-2"]["progress"] is None and tiles["sim-0"]["progress"] is None  # stale; none
    # The default window: the last hour, each figure over the last 15 minute buckets (the running one included).
    assert snap["window"]["label"] == "last hour" and snap["window"]["span_label"] == "15 min"
    by_task = {t["task"]: t for t in snap["kpis"]["tasks"]}
    assert by_task["shelf-place-v3"]["episodes"] == 15
    assert by_task["shelf-place-v3"]["autonomous"] == 7 / 15  # i odd: 1, 3, ..., 13
    assert by_task["pick-place-v3"]["episodes"] == 0 and by_task["pick-place-v3"]["autonomous"] is None
    assert snap["kpis"]["fleet"]["episodes"] == 15
    assert len(snap["series"]["x"]) == 61  # a point at each minute's end, and one at now
    assert sum(row["episodes"] for row in snap["series"]["recent"]) == 15  # the buckets of the last span


def test_episode_filters(client, olivia, tasks, robots):
    version = publish_random_policy(3, ["pick-place-v3"])
    flagged = raw_episode(tasks[0], robots[0], version, at=T0)
    labelled = raw_episode(tasks[0], robots[1], at=T0 + timedelta(hours=1))
    plain = raw_episode(tasks[1], robots[1], at=T0 + timedelta(hours=2))
    EpisodeFlag.raise_flag(flagged, olivia, "gripper slipped")
    EpisodeLabel.objects.create(episode=labelled, failure_mode="missed grasp")
    client.force_login(olivia)

    def shown(query):
        response = client.get(reverse("episodes") + "?" + query)
        assert response.status_code == 200, response.content
        return {episode.pk for episode in response.context["episodes"]}

    assert shown("flagged=yes") == {flagged.pk}
    assert shown("flagged=no") == {labelled.pk, plain.pk}
    assert shown("labelled=yes") == {labelled.pk}
    assert shown("version=3") == {flagged.pk}
    assert shown("since=2026-11-20T09:30&until=2026-11-20T10:30") == {labelled.pk}
    response = client.get(reverse("episodes") + "?since=2026-11-20T11:00&until=2026-11-20T10:00")
    assert response.status_code == 400 and b"must come before" in response.content


@pytest.mark.parametrize("persona, allowed", [("olivia", True), ("sam", True), ("anna", False), ("oscar", False)])
def test_operators_and_supervisors_may_flag_an_episode(client, request, tasks, persona, allowed):
    episode = raw_episode(tasks[0], at=T0)
    client.force_login(request.getfixturevalue(persona))
    response = client.post(reverse("episode-flag", args=[episode.pk]), {"reason": "stalled at the shelf"})
    assert response.status_code == (302 if allowed else 403)
    assert EpisodeFlag.objects.count() == (1 if allowed else 0)
    assert AuditEvent.objects.filter(verb="episode.flag").count() == (1 if allowed else 0)


def test_a_flag_without_a_reason_is_refused(client, olivia, tasks):
    episode = raw_episode(tasks[0], at=T0)
    client.force_login(olivia)
    response = client.post(reverse("episode-flag", args=[episode.pk]), {"reason": "   "})
    assert response.status_code == 400 and b"needs a reason" in response.content
    assert not EpisodeFlag.objects.exists() and not AuditEvent.objects.exists()


def test_the_breakdown_page_validates_its_window(client, olivia, tasks, robots):
    raw_episode(tasks[0], robots[0], at=T0, outcome="success")
    client.force_login(olivia)
    response = client.get(reverse("breakdown") + "?window=custom&since=2026-11-20T08:00&until=2026-11-20T10:00")
    assert response.status_code == 200
    assert response.context["table"]["versions"][0]["total"][0]["episodes"] == 1
    assert b"<strong>100 %</strong>" in response.content and b"1/1 \xc2\xb7 [21\xe2\x80\x93100]" in response.content
    assert client.get(reverse("breakdown") + "?window=custom&since=2026-11-20T08:00").status_code == 400
    assert client.get(reverse("breakdown") + "?window=fortnight").status_code == 400


def test_the_breakdown_shows_the_newest_versions_and_counts_the_rest(tasks, robots):
    for number in range(1, 16):
        version = publish_random_policy(number, ["pick-place-v3"], seed=number)
        raw_episode(tasks[0], robots[0], version, at=T0 + timedelta(minutes=number), outcome="success")
    table = dashboard.breakdown(T0, T0 + timedelta(hours=1), max_versions=12)
    assert [v["number"] for v in table["versions"]] == list(range(15, 3, -1))
    assert table["hidden_versions"] == 3
    chosen = dashboard.breakdown(T0, T0 + timedelta(hours=1), max_versions=12, numbers=[1, 2, 7, 99])
    assert [v["number"] for v in chosen["versions"]] == [7, 2, 1] and chosen["hidden_versions"] == 0
    raw_episode(tasks[0], robots[0], None, at=T0 + timedelta(minutes=30), outcome="success")  # no policy
    with_demos = dashboard.breakdown(T0, T0 + timedelta(hours=1), numbers=[0, 15])
    assert [v["number"] for v in with_demos["versions"]] == [15, None]


def test_the_breakdown_page_takes_version_numbers_and_ranges(client, olivia, tasks, robots):
    for number in range(1, 6):
        version = publish_random_policy(number, ["pick-place-v3"], seed=number)
        raw_episode(tasks[0], robots[0], version, at=T0 + timedelta(minutes=number), outcome="success")
    client.force_login(olivia)
    window = "?window=custom&since=2026-11-20T08:00&until=2026-11-20T10:00"
    response = client.get(reverse("breakdown") + window + "&versions=1, 3-4")
    assert [v["number"] for v in response.context["table"]["versions"]] == [4, 3, 1]
    response = client.get(reverse("breakdown") + window + "&versions=40-41")
    assert response.status_code == 200 and b"No episodes of the chosen versions" in response.content
    for bad in ("x", "4-2", "1-5000", "3,", "\u00b2", "1--2"):
        response = client.get(reverse("breakdown") + window + "&versions=" + bad)
        assert response.status_code == 400 and b"versions" in response.content, bad


def test_the_admin_shows_episodes_but_cannot_change_what_the_roll_ups_count(tasks, robots, admin_client):
    arrays = make_arrays(success_at=30)  # gate and operator segments
    episode, _ = ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=1, outcome="success", arrays=arrays,
                                robot_id=robots[0].pk, started_at=T0, finished_at=T0 + timedelta(seconds=3))
    url = reverse("admin:fleet_episode_change", args=[episode.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and "gate" in page.content.decode()
    form = page.context["adminform"].form
    assert "intervention_count" not in form.fields and "outcome" not in form.fields
    inline = page.context["inline_admin_formsets"][0]
    assert not inline.has_add_permission and not inline.formset.can_delete
    # The whole change form as the browser would send it (management forms and hidden ids included), with the
    # counted fields forged: the admin saves it (a redirect, not a form error) and ignores them.
    import re

    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.content.decode()))
    response = admin_client.post(url, {**data, "intervention_count": 9, "outcome": "failure", "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:2000]
    episode.refresh_from_db()
    assert (episode.intervention_count, episode.outcome) == (2, "success")
    assert set(EpisodeRollup.objects.values_list("interventions", flat=True)) == {2}


def test_a_tile_says_when_its_robot_runs_an_evaluation_episode(client, olivia, tasks, robots):
    import json
    import time

    from core import bus

    version = publish_random_policy(3, ["pick-place-v3"])
    robots[0].assign_version(version)
    candidate = publish_random_policy(4, ["pick-place-v3"], seed=4)
    bus.client().hset(bus.PROGRESS_KEY, mapping={
        robots[0].pk: json.dumps({"robot": robots[0].pk, "task": "pick-place-v3", "version": candidate.number,
                                  "source": "evaluation", "step": 12, "control": "policy", "at": time.time()}),
        robots[1].pk: json.dumps({"robot": robots[1].pk, "task": "pick-place-v3", "version": 3, "source": "online",
                                  "step": 3, "control": "policy", "at": time.time()}),
    })
    try:
        client.force_login(olivia)
        html = client.get(reverse("fleet")).content.decode()
    finally:
        bus.client().delete(bus.PROGRESS_KEY)
    tiles = {robot.pk: html.split(f'data-robot="{robot.pk}"')[1].split("</article>")[0] for robot in robots[:2]}
    assert '<dd data-field="version">v4 · evaluation</dd>' in tiles[robots[0].pk]
    assert "evaluation" not in tiles[robots[1].pk]


# --- autonomous and assisted success; one definition for KPIs and charts ------------------------------------------

def ingest_at(robot, task: str, finished_at, *, success: bool, helped: bool, version=None):
    """A real episode through ingestion: `helped` ones have the gate's and an operator's segments (tests.factories),
    the others only policy steps."""
    arrays = make_arrays(success_at=30 if success else None)
    if not helped:
        arrays["intervention_source"][:] = 0
        arrays["intervention"][:] = False
    episode, _ = ingest_episode(uuid=uuid.uuid4(), task=task, seed=1, outcome="success" if success else "timeout",
                                arrays=arrays, robot_id=robot.pk, policy_version_id=version.pk if version else None,
                                started_at=finished_at - timedelta(seconds=3), finished_at=finished_at)
    return episode


def test_an_episode_the_gate_rescued_is_an_assisted_success_not_an_autonomous_one(tasks, robots):
    from django.utils import timezone

    version = publish_random_policy(1, ["pick-place-v3"])
    now = timezone.now()
    rescued = ingest_at(robots[0], "pick-place-v3", now - timedelta(minutes=2), success=True, helped=True,
                        version=version)
    alone = ingest_at(robots[0], "pick-place-v3", now - timedelta(minutes=3), success=True, helped=False,
                      version=version)
    ingest_at(robots[0], "pick-place-v3", now - timedelta(minutes=4), success=False, helped=False, version=version)
    ingest_at(robots[1], "pick-place-v3", now - timedelta(minutes=5), success=False, helped=True, version=version)
    assert rescued.intervention_count == 2 and not rescued.autonomous_success and alone.autonomous_success

    snap = dashboard.fleet_snapshot(now)
    kpis = snap["kpis"]["fleet"]
    assert (kpis["episodes"], kpis["autonomous"], kpis["assisted"]) == (4, 1 / 4, 1 / 4)  # not 2 / 4 success
    [pick] = [t for t in snap["kpis"]["tasks"] if t["task"] == "pick-place-v3"]
    assert (pick["autonomous"], pick["assisted"]) == (0.25, 0.25)
    # The charts' data: the success chart's last point, and the version's cumulative line.
    assert snap["series"]["fleet"]["autonomous"][-1] == 0.25 and snap["series"]["fleet"]["assisted"][-1] == 0.25
    line = snap["series"]["versions"][version.pk]
    assert (line["autonomous"][-1], line["assisted"][-1]) == (0.25, 0.25)
    # The breakdown: robot sim-0 had 1 autonomous and 1 assisted success of 3 episodes.
    table = dashboard.breakdown(now - timedelta(hours=1), now + timedelta(minutes=1))
    cells = {line["robot"]: line["cells"][0] for line in table["versions"][0]["robots"]}
    assert (cells["sim-0"]["successes"], cells["sim-0"]["assisted"], cells["sim-0"]["episodes"]) == (1, 1, 3)
    assert (cells["sim-1"]["successes"], cells["sim-1"]["assisted"]) == (0, 0)
    total = table["versions"][0]["total"][0]
    assert (total["successes"], total["assisted"], total["episodes"]) == (1, 1, 4)


@pytest.fixture
def busy_fleet(tasks, robots):
    """A week of real ingested episodes (mostly the last hours), a seeded mix of tasks, outcomes and help."""
    from django.utils import timezone

    version = publish_random_policy(1, ["pick-place-v3"])
    rng = random.Random(16)
    now = timezone.now()
    ages = [rng.uniform(0, 50) for _ in range(60)] + [rng.uniform(50, 600) for _ in range(40)] + \
           [rng.uniform(600, 7 * 1440) for _ in range(40)]
    for minutes in ages:
        ingest_at(rng.choice(robots), rng.choice(["pick-place-v3", "shelf-place-v3"]),
                  now - timedelta(minutes=minutes), success=rng.random() < 0.7, helped=rng.random() < 0.5,
                  version=version)
    return now


@pytest.mark.parametrize("preset", ["15m", "1h", "6h", "24h", "7d"])
def test_each_kpi_is_its_charts_last_point_and_counts_what_it_says(busy_fleet, preset):
    from fleet.forms import WindowForm

    now = busy_fleet + timedelta(seconds=20)
    window = WindowForm({"window": preset}).chart_window(now)
    snap = dashboard.fleet_snapshot(now, window)
    series, kpis = snap["series"], snap["kpis"]
    assert series["x"][-1] == now.isoformat()  # the last point is now
    for name, values in series["fleet"].items():
        assert kpis["fleet"][name] == values[-1], name
    for task in kpis["tasks"]:
        for name in ("autonomous", "assisted", "episodes"):
            assert task[name] == series["tasks"][task["id"]][name][-1], (task["task"], name)
    # ... and that last point is the definition, counted directly from the episodes of its span: the span's
    # buckets up to the running one, its length up to now.
    bucket, buckets = window.resolution.bucket, window.resolution.span
    first = dashboard.floor_to(now, bucket) - bucket * (buckets - 1)
    episodes = Episode.objects.filter(source="online", finished_at__gte=first, finished_at__lt=now)
    n = episodes.count()
    assert kpis["fleet"]["episodes"] == n > 0
    assert kpis["fleet"]["autonomous"] == episodes.filter(AUTONOMOUS_SUCCESS).count() / n
    assert kpis["fleet"]["assisted"] == episodes.filter(ASSISTED_SUCCESS).count() / n
    assert kpis["fleet"]["episodes_per_hour"] == pytest.approx(n * 3600 / (now - first).total_seconds())
    interventions = sum(episodes.values_list("intervention_count", flat=True))
    assert kpis["fleet"]["interventions_per_hour"] == pytest.approx(interventions * 3600 / (now - first).total_seconds())


def test_the_charts_read_coarser_buckets_for_longer_windows(busy_fleet, django_assert_num_queries):
    from fleet.forms import WindowForm

    now = busy_fleet + timedelta(seconds=20)
    expected = {"15m": (60, 5, 15), "6h": (60, 15, 360), "24h": (300, 12, 288), "7d": (3600, 6, 168)}
    task_ids = list(Task.objects.values_list("pk", flat=True))
    for preset, (seconds, span, points) in expected.items():
        window = WindowForm({"window": preset}).chart_window(now)
        assert (window.resolution.bucket.total_seconds(), window.resolution.span) == (seconds, span)
        with django_assert_num_queries(1):  # one scan, summed per task and per version in SQL
            series = dashboard.fleet_series(window, task_ids)
        # A point at every bucket end in the window and one at now; the first within a bucket of its start.
        assert len(series["x"]) in (points, points + 1), preset
        first = datetime.fromisoformat(series["x"][0])
        assert timedelta(0) < first - window.start <= window.resolution.bucket
    # A 7-day window's episodes per hour at its last point agree with the minute-resolution windows' rows: both
    # count the same episodes.
    week = dashboard.fleet_series(WindowForm({"window": "7d"}).chart_window(now), [])
    assert week["fleet"]["episodes"][-1] == Episode.objects.filter(
        finished_at__gte=dashboard.floor_hour(now) - timedelta(hours=5)).count()


def test_a_past_custom_range_is_fixed_and_in_whole_buckets(busy_fleet):
    from fleet.forms import WindowForm

    now = busy_fleet
    since, until = now - timedelta(hours=30), now - timedelta(hours=3, minutes=7)
    window = WindowForm({"window": "custom", "since": since.strftime("%Y-%m-%dT%H:%M"),
                         "until": until.strftime("%Y-%m-%dT%H:%M")}).chart_window(now)
    assert not window.live and not window.moving and window.resolution.bucket == timedelta(minutes=5)
    assert window.end == dashboard.ceil_to(until.replace(second=0, microsecond=0), timedelta(minutes=5))
    series = dashboard.fleet_series(window, [])
    assert series["x"][-1] == window.end.isoformat()


def test_the_fleet_page_takes_a_window_and_refuses_a_bad_one_clearly(client, olivia, busy_fleet):
    client.force_login(olivia)
    response = client.get(reverse("fleet") + "?window=7d")
    assert response.status_code == 200
    assert response.context["snapshot"]["window"]["label"] == "last 7 days"
    assert response.context["snapshot"]["window"]["span_label"] == "6 h"
    html = response.content.decode()
    assert 'data-window="7d" class="current"' in html and 'title="Autonomous success: ' in html
    for query, message in (("?window=fortnight", "fortnight is not one of the available choices"),
                           ("?window=custom&until=2026-11-20T10:00", "needs both"),
                           ("?window=custom&since=2026-11-20T11:00&until=2026-11-20T10:00", "must come before"),
                           ("?window=custom&since=2026-01-01T00:00&until=2026-11-20T10:00", "at most 31 days"),
                           ("?window=custom&since=2999-01-01T00:00&until=2999-01-02T10:00", "in the future")):
        response = client.get(reverse("fleet") + query)
        html = response.content.decode()
        assert response.status_code == 400 and message in html, query
        assert 'id="window-errors"' in html and "Showing the default window instead" in html
        assert response.context["snapshot"]["window"]["label"] == "last hour"  # the page still renders
        assert client.get(reverse("fleet-snapshot") + query).status_code == 400
    snapshot = client.get(reverse("fleet-snapshot") + "?window=24h").json()
    assert snapshot["window"]["label"] == "last 24 hours" and len(snapshot["series"]["x"]) in (288, 289)


def test_the_breakdown_picker_keeps_the_source_and_versions(client, olivia, tasks, robots):
    client.force_login(olivia)
    response = client.get(reverse("breakdown") + "?window=6h&source=evaluation&versions=3-4")
    links = {link["key"]: link for link in response.context["picker"]}
    assert links["6h"]["current"] and not links["24h"]["current"]
    assert links["7d"]["query"] == "source=evaluation&versions=3-4&window=7d"


def test_the_version_chart_shows_the_newest_versions_of_its_window(tasks, robots):
    from django.utils import timezone

    from fleet.forms import WindowForm

    now = timezone.now()
    versions = [publish_random_policy(number, ["pick-place-v3"], seed=number) for number in range(1, 10)]
    raw_episode(tasks[0], robots[0], versions[8], at=now - timedelta(hours=2), outcome="success")  # before the window
    for k, version in enumerate(versions[:8]):
        raw_episode(tasks[0], robots[0], version, at=now - timedelta(minutes=40 - k), outcome="success")
        raw_episode(tasks[0], robots[1], version, at=now - timedelta(minutes=40 - k), outcome="failure",
                    intervention_steps=3 if k % 2 else 0)
    series = dashboard.fleet_series(WindowForm({"window": "1h"}).chart_window(now), [tasks[0].pk])
    assert sorted(series["versions"]) == [v.pk for v in versions[2:8]]  # the newest 6 that ran in the window
    line = series["versions"][versions[7].pk]
    assert (line["autonomous"], line["episodes"], line["totals"]["episodes"]) == ([0.5], [2], 2)
