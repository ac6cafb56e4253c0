"""The dashboard in a real headless Chromium against the real web process (uvicorn), with live events on real Redis.

Each test leaves a screenshot under var/test-screenshots/ (the path is printed at the end of the run).
"""
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Task
from tests.conftest import ROOT, process_env, publish_random_policy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.filterwarnings("ignore::UserWarning")]

INGEST_FROM_ANOTHER_PROCESS = """
import sys, uuid, django
django.setup()
from datetime import timedelta
from django.utils import timezone
from fleet.ingest import ingest_episode
from tests.factories import make_arrays
now = timezone.now()
episode, _ = ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=7, outcome="success",
                            arrays=make_arrays(success_at=45), robot_id=int(sys.argv[1]),
                            policy_version_id=int(sys.argv[2]), started_at=now - timedelta(seconds=4), finished_at=now)
print(episode.pk)
"""


@pytest.fixture
def fleet_with_history(db):
    task = Task.objects.create(env_name="pick-place-v3")
    version = publish_random_policy(1, ["pick-place-v3"])
    robots = [control.add(name, tasks=[task]) for name in ("sim-01", "sim-02")]
    now = timezone.now()
    for i in range(12):
        Episode.objects.create(task=task, robot=robots[i % 2], policy_version=version, seed=i, steps=100,
                               outcome="success" if i % 3 else "failure", total_return=1.0,
                               started_at=now - timedelta(minutes=30 - i, seconds=5),
                               finished_at=now - timedelta(minutes=30 - i))
    return task, version, robots


LAST_POINT = "(() => { const y = document.getElementById('%s').data[0].y; return y[y.length - 1]; })()"


def trace_points(page, chart: str) -> int:
    return page.evaluate(f"document.getElementById('{chart}').data.reduce((n, t) => n + t.x.length, 0)")


def test_an_episode_from_another_process_appears_live(browser_session, olivia, fleet_with_history):
    _, version, robots = fleet_with_history
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#live-state.on")  # the socket is open
    assert page.locator(".tile").count() == 2
    assert "sim-01" in page.inner_text("#robots") and "sim-02" in page.inner_text("#robots")
    tile = page.locator(f'.tile[data-robot="{robots[0].pk}"]')
    marks_before = tile.locator(".mark").count()
    assert marks_before == 6
    points_before = {chart: trace_points(page, chart) for chart in ("chart-task", "chart-version", "chart-throughput")}
    page.evaluate("window.notReloaded = true")

    result = subprocess.run([sys.executable, "-c", INGEST_FROM_ANOTHER_PROCESS, str(robots[0].pk), str(version.pk)],
                            cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    episode_id = int(result.stdout.split()[-1])

    tile.locator(f'a[href="/episodes/{episode_id}/"].mark-success').wait_for(timeout=10000)
    for chart, before in points_before.items():
        page.wait_for_function(
            f"() => document.getElementById('{chart}').data.reduce((n, t) => n + t.x.length, 0) > {before}", timeout=10000)
    assert page.evaluate("window.notReloaded") is True  # extended in place, not reloaded
    assert tile.locator(".mark").count() == marks_before + 1
    # The new episode's gate and operator takeovers, per hour of the KPI's span: the chart's last point.
    page.wait_for_function(f"() => {LAST_POINT % 'chart-interventions'} > 0", timeout=10000)
    last = page.evaluate(LAST_POINT % "chart-interventions")
    assert page.inner_text('[data-kpi="interventions_per_hour"]') == str(round(last))
    session.screenshot("fleet")
    assert session.console_errors == []


def test_an_operator_pauses_a_robot_from_its_tile(browser_session, olivia, fleet_with_history):
    _, _, robots = fleet_with_history
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    tile = page.locator(f'.tile[data-robot="{robots[1].pk}"]')
    tile.get_by_role("button", name="Pause").click()
    page.wait_for_load_state("load")
    assert "sim-02: pause done." in page.inner_text("#alerts ~ p, main")
    assert page.locator(f'.tile[data-robot="{robots[1].pk}"] [data-field="status"]').inner_text() == "paused"
    assert AuditEvent.objects.filter(verb="robot.pause", actor=olivia).count() == 1
    assert session.console_errors == []


def ingested(version, robot):
    from fleet.ingest import ingest_episode
    from tests.factories import make_arrays

    now = timezone.now()
    episode, _ = ingest_episode(uuid=uuid.uuid4(), task="pick-place-v3", seed=3, outcome="timeout",
                                arrays=make_arrays(), robot_id=robot.pk, policy_version_id=version.pk,
                                started_at=now - timedelta(seconds=3), finished_at=now)
    return episode


def test_the_episode_page_draws_its_charts(browser_session, olivia, fleet_with_history):
    _, version, robots = fleet_with_history
    episode = ingested(version, robots[0])
    session = browser_session(olivia)
    page = session.page
    page.goto(f"{session.base_url}/episodes/{episode.pk}/")
    for chart in ("chart-actions", "chart-reward"):
        page.wait_for_selector(f"#{chart} .main-svg")
        assert trace_points(page, chart) > 0
    # the intervention segments are shaded on the action chart: one shape per segment
    assert page.evaluate("document.getElementById('chart-actions').layout.shapes.length") >= 2
    page.fill("input[name=reason]", "expert took over late")
    page.get_by_role("button", name="Flag episode").click()
    page.wait_for_load_state("load")
    assert "expert took over late" in page.inner_text("main")
    assert episode.flags.get().raised_by == olivia
    assert session.console_errors == []


def test_an_annotator_sees_no_operator_controls(browser_session, anna, fleet_with_history):
    _, version, robots = fleet_with_history
    episode = ingested(version, robots[0])
    session = browser_session(anna)
    page = session.page
    page.goto(f"{session.base_url}/episodes/{episode.pk}/")
    assert page.locator("#chart-actions").count() == 1
    assert page.get_by_role("button", name="Flag episode").count() == 0
    assert page.locator("input[name=reason]").count() == 0
    response = page.goto(session.base_url + "/fleet/")
    assert response.status == 403
    assert page.locator("form[action*='/robots/']").count() == 0
    assert page.locator("#live-state").count() == 0  # no socket for a role that may not watch the fleet


def test_an_operator_enrols_a_remote_robot_from_the_fleet_page_and_revokes_its_token(browser_session, olivia,
                                                                                       fleet_with_history):
    from gateway.models import RobotToken

    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.get_by_role("link", name="Enrol a remote robot").click()
    page.fill("#id_name", "arm-remote-1")
    page.select_option("#id_tasks", ["pick-place-v3"])
    page.get_by_role("button", name="Enrol").click()
    token = page.inner_text("#robot-token").strip()
    assert token.startswith("sopr_")
    session.screenshot("token-shown-once")
    page.get_by_role("link", name="arm-remote-1's page").click()
    row = page.locator(f'tr[data-token="{token.split("_")[1]}"]')
    assert row.locator("td").nth(1).inner_text() == "active" and token not in page.content()
    session.screenshot("remote-robot-page")
    row.get_by_placeholder("reason").fill("test over")
    row.get_by_role("button", name="Revoke").click()
    page.wait_for_load_state("load")
    assert page.locator(f'tr[data-token="{token.split("_")[1]}"] td').nth(1).inner_text() == "revoked"
    assert RobotToken.objects.get().revoked_by == olivia
    page.goto(session.base_url + "/fleet/")
    assert page.locator(".tile .badge.remote").count() == 1
    session.screenshot("fleet-with-remote-robot")
    assert session.console_errors == []
