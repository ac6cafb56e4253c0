"""The operator's truth, in a real headless Chromium against the real web process: every KPI is the last point of
its chart (also after a live episode), the time-range picker changes the window, a young fleet's charts span their
whole window, every figure has a definition on hover, and the learner's curves stay one line across a restart.

Screenshots go to var/test-screenshots/ (the whole page, and the part each test is about)."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from fleet import control
from fleet.ingest import ingest_episode
from fleet.models import Task
from tests.conftest import SCREENSHOTS, publish_random_policy
from tests.factories import make_arrays

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.filterwarnings("ignore::UserWarning")]

# A chart trace's last point, formatted as the page formats the KPI (static/js/fleet.js: percent, whole).
LAST_POINT = """([chart, trace, rate]) => {
    const t = document.getElementById(chart).data.find((t) => t.name === trace);
    const v = t.y[t.y.length - 1];
    return v == null ? "—" : rate ? Math.round(v * 100) + " %" : String(Math.round(v));
}"""


def ingest(robot, version, finished_at, *, success: bool, helped: bool, task="pick-place-v3"):
    arrays = make_arrays(success_at=30 if success else None)
    if not helped:
        arrays["intervention_source"][:] = 0
        arrays["intervention"][:] = False
    episode, _ = ingest_episode(uuid=uuid.uuid4(), task=task, seed=5, outcome="success" if success else "timeout",
                                arrays=arrays, robot_id=robot.pk, policy_version_id=version.pk,
                                started_at=finished_at - timedelta(seconds=3), finished_at=finished_at)
    return episode


@pytest.fixture
def busy_fleet(db):
    tasks = [Task.objects.create(env_name=name) for name in ("pick-place-v3", "shelf-place-v3")]
    version = publish_random_policy(1, ["pick-place-v3", "shelf-place-v3"])
    robots = [control.add(name, tasks=tasks) for name in ("sim-01", "sim-02")]
    rng = random.Random(7)
    now = timezone.now()
    for k in range(60):  # the last 50 minutes, about half of them with the gate's and an operator's help
        ingest(robots[k % 2], version, now - timedelta(seconds=rng.uniform(20, 3000)), success=rng.random() < 0.75,
               helped=rng.random() < 0.5, task=rng.choice(["pick-place-v3", "shelf-place-v3"]))
    return version, robots


def shot(session, selector: str, label: str) -> None:
    """A screenshot of one part of the page, beside the session's full-page ones."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    session.page.locator(selector).screenshot(path=str(SCREENSHOTS / f"{session.name}-{label}.png"))


def kpis_and_last_points(page) -> dict:
    """Each KPI as shown, and its chart's last point formatted as the KPI is."""
    pairs = {
        "autonomous": ("chart-task", "all tasks", True), "assisted": ("chart-task", "all tasks, assisted", True),
        "episodes_per_hour": ("chart-throughput", "episodes / hour", False),
        "interventions_per_hour": ("chart-interventions", "interventions / hour", False),
        "steps_between_interventions": ("chart-steps", "policy steps between interventions", False),
    }
    return {kpi: (page.inner_text(f'[data-kpi="{kpi}"]'), page.evaluate(LAST_POINT, [chart, trace, rate]))
            for kpi, (chart, trace, rate) in pairs.items()}


def test_each_kpi_is_its_charts_last_point_before_and_after_a_live_episode(browser_session, olivia, busy_fleet):
    version, robots = busy_fleet
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#live-state.on")
    page.wait_for_selector("#chart-steps .main-svg")
    pairs = kpis_and_last_points(page)
    assert all(shown == chart for shown, chart in pairs.values()), pairs
    assert pairs["autonomous"][0] != "—" and pairs["episodes_per_hour"][0] != "0"
    # Per task, too: the task row's autonomous success is its line's last point.
    for task in ("pick-place-v3", "shelf-place-v3"):
        cell = page.inner_text(f'tr[data-task="{task}"] [data-figure="autonomous"]')
        assert cell == page.evaluate(LAST_POINT, ["chart-task", task, True]), task
    shot(session, "#kpi-card", "kpis")
    shot(session, "#charts", "charts")

    # A live episode the gate rescued: the assisted share and the takeovers rise; KPIs and last points move together.
    before = page.inner_text('[data-kpi="interventions_per_hour"]')
    ingest(robots[0], version, timezone.now(), success=True, helped=True)
    page.wait_for_function(f"() => document.querySelector('[data-kpi=\"interventions_per_hour\"]').textContent "
                           f"!== {before!r}", timeout=10000)
    page.wait_for_timeout(600)  # the charts redraw at most every 250 ms
    pairs = kpis_and_last_points(page)
    assert all(shown == chart for shown, chart in pairs.values()), pairs
    session.screenshot("after-live-episode")
    shot(session, "#kpi-card", "kpis-after-live-episode")
    assert session.console_errors == []


def test_every_figure_and_chart_says_what_it_means(browser_session, olivia, busy_fleet):
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#chart-steps .main-svg")
    for kpi in ("autonomous", "episodes_per_hour", "interventions_per_hour", "steps_between_interventions"):
        title = page.locator(f'[data-kpi="{kpi}"]').locator("xpath=..").get_attribute("title")
        assert title and len(title) > 40, kpi
    assert page.locator('[data-kpi="assisted"]').locator("xpath=..").get_attribute("title").startswith(
        "Assisted success")
    for chart in ("chart-task", "chart-version", "chart-throughput", "chart-interventions", "chart-steps"):
        assert page.locator(f"#{chart} ~ p.definition").get_attribute("title"), chart
        layout = page.evaluate(f"document.getElementById('{chart}')._fullLayout")
        assert layout["title"]["text"] and layout["xaxis"]["title"]["text"] == "time (UTC)", chart
        assert layout["yaxis"]["title"]["text"], chart
        # Several lines: a legend beside the plot, never over its axis; one line: its title names it.
        several = len(page.evaluate(f"document.getElementById('{chart}').data")) > 1 or chart == "chart-version"
        assert layout["showlegend"] is several and (not several or layout["legend"]["x"] > 1), chart
    page.hover("#kpis [title^='Autonomous success'] strong")
    session.screenshot("definitions")
    assert session.console_errors == []


def x_range_seconds(page, chart: str) -> float:
    """The x-axis' span, less the 2 % margin the page adds after the window's end."""
    return page.evaluate(f"(() => {{ const r = document.getElementById('{chart}')._fullLayout.xaxis.range; "
                         f"return (Date.parse(r[1]) - Date.parse(r[0])) / 1000 / 1.02; }})()")


def test_a_young_fleets_charts_span_their_whole_window_from_the_start(browser_session, olivia, db):
    task = Task.objects.create(env_name="pick-place-v3")
    version = publish_random_policy(1, ["pick-place-v3"])
    robot = control.add("sim-01", tasks=[task])
    ingest(robot, version, timezone.now() - timedelta(seconds=2), success=True, helped=False)  # one episode, just now
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#chart-throughput .main-svg")
    for chart in ("chart-task", "chart-version", "chart-throughput", "chart-interventions", "chart-steps"):
        assert x_range_seconds(page, chart) == pytest.approx(3600, abs=5), chart  # the hour, not a second
    ticks = page.locator("#chart-throughput .xtick text").all_inner_texts()
    assert len(ticks) >= 3, ticks
    shot(session, "#chart-throughput", "throughput-young-fleet")
    assert session.console_errors == []


def test_the_time_range_picker_changes_the_window(browser_session, olivia, busy_fleet):
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#chart-task .main-svg")
    assert x_range_seconds(page, "chart-task") == pytest.approx(3600, abs=5)
    page.click('#window-picker a[data-window="24h"]')
    page.wait_for_load_state("load")
    assert page.url.endswith("/fleet/?window=24h")
    page.wait_for_selector("#chart-task .main-svg")
    assert x_range_seconds(page, "chart-task") == pytest.approx(86400, abs=5)
    assert page.inner_text("#kpi-span") == "1 h"  # 5-minute buckets, each figure over the last hour
    assert page.locator('#window-picker a.current').inner_text() == "24 h"
    pairs = kpis_and_last_points(page)
    assert all(shown == chart for shown, chart in pairs.values()), pairs
    session.screenshot("24h")

    # A custom range: the charts show exactly it.
    now = timezone.now()
    since, until = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"), (now - timedelta(minutes=30)).strftime(
        "%Y-%m-%dT%H:%M")
    page.fill("#window-picker input[name=since]", since)
    page.fill("#window-picker input[name=until]", until)
    page.click("#window-picker button[type=submit]")
    page.wait_for_load_state("load")
    page.wait_for_selector("#chart-task .main-svg")
    assert "window=custom" in page.url
    assert x_range_seconds(page, "chart-task") == pytest.approx(90 * 60, abs=1)
    x0 = page.evaluate("document.getElementById('chart-task')._fullLayout.xaxis.range[0]")
    assert datetime.fromisoformat(x0).replace(tzinfo=None) == datetime.fromisoformat(since)
    session.screenshot("custom")

    # Nonsense: a clear error, and the page still works on its default window.
    response = page.goto(session.base_url + "/fleet/?window=custom&since=2026-11-20T11:00&until=2026-11-20T10:00")
    assert response.status == 400
    assert "must come before" in page.inner_text("#window-errors")
    page.wait_for_selector("#chart-task .main-svg")
    assert x_range_seconds(page, "chart-task") == pytest.approx(3600, abs=5)
    shot(session, "#window-picker", "bad-range")
    assert session.console_errors == [] or all("400" in error for error in session.console_errors)


def test_the_learner_chart_stays_one_line_across_a_restart(browser_session, sam, db):
    from core.events import broadcast
    from learner.models import PolicyVersion, TrainingMetric, TrainingRun

    base = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="p", checkpoint_sha256="0" * 64)
    run = TrainingRun.objects.create(algorithm="hg_dagger", base_version=base)
    start = timezone.now() - timedelta(minutes=12)

    def metric(step, at, resumed_from=None):
        return TrainingMetric(run=run, step=step, created_at=at, loss=2.0 / (1 + step / 500), resumed_from=resumed_from,
                              samples_per_second=4200 - 200 * 0.999 ** step, staleness_mean=0.5, staleness_max=2,
                              tasks={"pick-place-v3": {"w_on": 0.5, "positive_share": 0.3 + step / 40_000,
                                                       "buffer": {"online": 1000 + step, "offline": 5000}}})

    # Steps 50..2000 over 200 s; a crash; the state saved at 1500 resumes at 230 s and repeats 1550..2000.
    rows = [metric(step, start + timedelta(seconds=step / 10)) for step in range(50, 2001, 50)]
    restart_at = start + timedelta(seconds=230)
    rows += [metric(step, restart_at + timedelta(seconds=(step - 1550) / 10), 1500 if step == 1550 else None)
             for step in range(1550, 4001, 50)]
    TrainingMetric.objects.bulk_create(rows)

    session = browser_session(sam)
    page = session.page
    page.goto(session.base_url + "/learner/?window=15m")
    page.wait_for_selector("#chart-buffer .main-svg")
    page.wait_for_selector("#live-state.on")

    def steps(chart="chart-buffer"):
        return page.evaluate(f"document.getElementById('{chart}').data[0].customdata")

    def times(chart="chart-buffer"):
        return page.evaluate(f"document.getElementById('{chart}').data[0].x")

    drawn = steps()
    assert drawn == sorted(drawn) and len(set(drawn)) == len(drawn) and drawn[-1] == 4000  # no saw-tooth
    assert times() == sorted(times())
    restarts = page.evaluate("document.getElementById('chart-buffer').layout.shapes")
    assert len(restarts) == 1 and restarts[0]["line"]["dash"] == "dash"
    assert x_range_seconds(page, "chart-loss") == pytest.approx(900, abs=5)
    assert page.inner_text("#kpi-restarts") == "1" and page.inner_text("#kpi-step") == "4000"
    assert page.inner_text("#kpi-loss") == f"{2.0 / (1 + 4000 / 500):.4f}"  # the loss chart's last point
    # RECAP's realised positive share rides on the share chart, dashed beside its task's w_on.
    shares = page.evaluate("document.getElementById('chart-share').data.map(t => [t.name, t.line.dash, t.y.at(-1)])")
    assert [dash for name, dash, _ in shares if name.endswith("positive")] == ["dash"]
    assert [last for name, _, last in shares if name.endswith("positive")] == [pytest.approx(0.3 + 4000 / 40_000)]
    shot(session, "#learner-charts", "learner-restart")

    # Live: another restart, from the state saved at 3500: 3550..4000 are dropped, the line goes on from 3550.
    now = timezone.now()
    point = metric(3550, now, resumed_from=3500)
    point.save()
    broadcast("learner.metrics", point.point())
    page.wait_for_function("() => document.getElementById('kpi-restarts').textContent === '2'", timeout=10000)
    page.wait_for_timeout(800)  # the charts redraw at most every 500 ms
    drawn = steps()
    assert drawn == sorted(drawn) and drawn[-1] == 3550 and 4000 not in drawn
    assert len(page.evaluate("document.getElementById('chart-buffer').layout.shapes")) == 2
    assert page.inner_text("#kpi-step") == "3550"
    session.screenshot("learner-after-live-restart")
    shot(session, "#learner-charts", "learner-after-live-restart-charts")
    assert session.console_errors == []


def test_the_breakdown_leads_with_autonomous_success_and_takes_the_picker(browser_session, sam, busy_fleet):
    session = browser_session(sam)
    page = session.page
    page.goto(session.base_url + "/fleet/breakdown/?window=6h&source=online")
    cell = page.locator("table.breakdown tr.total td.cell").first
    assert "assisted" in cell.inner_text() and cell.get_attribute("title").startswith("autonomous: ")
    assert page.locator("p.muted .info").first.get_attribute("title").startswith("Autonomous success: ")
    page.click('#window-picker a[data-window="15m"]')
    page.wait_for_load_state("load")
    assert page.url.endswith("/fleet/breakdown/?source=online&window=15m")
    assert page.locator('#window-picker a.current').inner_text() == "15 min"
    session.screenshot("breakdown-15m")
    assert session.console_errors == []
