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
from fleet.models import Episode, Robot, Task
from tests.conftest import ROOT, SCREENSHOTS, process_env, publish_random_policy, wait_for

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
    control.start(robots[1], olivia)
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    tile = page.locator(f'.tile[data-robot="{robots[1].pk}"]')
    tile.get_by_role("button", name="Pause").click()
    tile.locator('[data-field="status"].state-paused').wait_for(timeout=5000)  # the POST's answer, no reload
    assert "sim-02: pause done." in tile.inner_text()
    assert tile.locator('[data-field="status"]').inner_text() == "paused"
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


def test_the_episode_page_draws_its_charts(browser_session, olivia, fleet_with_history, tmp_path):
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
    # The Rerun recording downloads from the page and opens with the SDK's reader.
    with page.expect_download() as download:
        page.click("#recording-link")
    assert download.value.suggested_filename == f"episode-{episode.pk}.rrd"
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    from rerun.chunk import RrdReader

    assert {"/observation/state", "/intervention/segments"} <= {c.entity_path for c in RrdReader(saved).stream()}
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
    page.get_by_role("link", name="arm-remote-1's credentials").click()
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


# --- robot tiles that never lie, on the real stack ----------------------------------------------------------

def badge(tile) -> str:
    return tile.locator('[data-field="status"]').inner_text()


def offered(tile) -> list[str]:
    """The command buttons the tile shows (those its state does not allow are hidden)."""
    return [b.inner_text() for b in tile.locator("button[data-command]").all() if b.is_visible()]


def press(tile, button: str, reason: str = "") -> None:
    tile.locator('input[name="reason"]').fill(reason)
    tile.get_by_role("button", name=button, exact=True).click()


def wait_badge(page, robot_id: int, *labels: str, timeout: float = 5000) -> None:
    page.wait_for_function(
        "([id, labels]) => labels.includes(document.querySelector(`.tile[data-robot='${id}'] [data-field=status]`)"
        ".textContent)", arg=[robot_id, list(labels)], timeout=timeout)


def shoot(session, tile, label: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tile.screenshot(path=str(SCREENSHOTS / f"{session.name}-tile-{label}.png"))


@pytest.fixture
def short_task_fleet(db):
    from tests.factories import make_tasks

    task = make_tasks(["pick-place-v3"])[0]  # 120 steps: ~6 s at a quarter of real time
    version = publish_random_policy(1, ["pick-place-v3"])
    robot = control.add("sim-truth", tasks=[task])
    Robot.objects.filter(pk=robot.pk).update(policy_version=version)
    return robot


def test_a_tile_follows_its_robot_through_take_over_pause_resume_and_stop(browser_session, start_worker, olivia,
                                                                          sam, short_task_fleet):
    robot = short_task_fleet
    start_worker(queues="actors", FLEET_REALTIME_FACTOR=0.25, FLEET_GATE='{"enabled": false}')
    watcher = browser_session(sam)  # another dashboard: it follows from the live events alone
    watcher.page.goto(watcher.base_url + "/fleet/")
    watcher.page.wait_for_selector("#live-state.on")
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#live-state.on")
    tile = page.locator(f'.tile[data-robot="{robot.pk}"]')
    # Every label the badge ever shows, in order.
    page.evaluate("""() => { const el = document.querySelector('.tile [data-field="status"]');
        window.badges = [el.textContent];
        new MutationObserver(() => window.badges.push(el.textContent)).observe(el, {childList: true}); }""")
    assert (badge(tile), offered(tile)) == ("stopped", ["Start", "Remove"])
    shoot(session, tile, "1-stopped")

    press(tile, "Start", "shift begins")
    wait_badge(page, robot.pk, "policy in control", timeout=60000)  # starting, then its first report
    assert offered(tile) == ["Stop", "Pause", "Take over"]
    wait_for(lambda: Robot.objects.get(pk=robot.pk).status == Robot.Status.RUNNING, 30, "the episode to run")
    shoot(session, tile, "2-policy")

    press(tile, "Take over", "it is about to drop the box")
    wait_badge(page, robot.pk, "operator in control", timeout=2000)  # the POST's answer
    assert offered(tile) == ["Stop", "Pause"]
    wait_badge(watcher.page, robot.pk, "operator in control", timeout=3000)  # the event, on the other page
    shoot(session, tile, "3-operator")
    page.wait_for_timeout(1500)  # the robot's reports meanwhile do not flip it back
    assert badge(tile) == "operator in control"
    wait_badge(page, robot.pk, "policy in control", timeout=15000)  # its episode ended: the next is the policy's

    press(tile, "Pause", "inspect the gripper")
    wait_badge(page, robot.pk, "paused", timeout=2000)
    assert offered(tile) == ["Stop", "Resume"]
    shoot(session, tile, "4-paused")
    page.wait_for_timeout(1000)  # the aborted episode is stored meanwhile

    press(tile, "Resume", "gripper fine")
    wait_badge(page, robot.pk, "starting", "policy in control", timeout=2000)
    assert "Take over" in offered(tile)
    press(tile, "Take over", "watch the next grasp")  # right after the resume: accepted
    wait_badge(page, robot.pk, "operator in control", timeout=2000)
    shoot(session, tile, "5-operator-after-resume")

    press(tile, "Stop", "end of shift")
    wait_badge(page, robot.pk, "stopped", timeout=2000)
    assert offered(tile) == ["Start", "Remove"]
    wait_badge(watcher.page, robot.pk, "stopped", timeout=3000)
    # Its last episode, still the operator's, ends: the policy has the robot again, and it stays stopped.
    wait_for(lambda: Robot.objects.get(pk=robot.pk).status == Robot.Status.RUNNING, 15, "the takeover to end")
    page.wait_for_timeout(1000)
    assert badge(tile) == "stopped" and badge(watcher.page.locator(f'.tile[data-robot="{robot.pk}"]')) == "stopped"
    shoot(session, tile, "6-stopped")
    assert "offline" not in page.evaluate("window.badges")  # resume no longer shows a red "offline"

    reasons = list(AuditEvent.objects.filter(actor=olivia).order_by("id").values_list("verb", "reason"))
    assert reasons == [("robot.start", "shift begins"), ("robot.takeover", "it is about to drop the box"),
                       ("robot.pause", "inspect the gripper"), ("robot.resume", "gripper fine"),
                       ("robot.takeover", "watch the next grasp"), ("robot.stop", "end of shift")]
    assert watcher.page.locator("button[data-command]").count() == 0  # a supervisor watches, without controls
    session.screenshot("fleet-after-stop")
    assert session.console_errors == [] and watcher.console_errors == []


def test_a_stale_tile_is_refused_with_the_reason_and_corrected(browser_session, olivia, fleet_with_history):
    _, _, robots = fleet_with_history
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    tile = page.locator(f'.tile[data-robot="{robots[0].pk}"]')
    assert offered(tile) == ["Start", "Remove"]
    # A button the tile should not offer, as a tile that missed an event would (unhidden by hand here).
    page.evaluate(f"document.querySelector('.tile[data-robot=\"{robots[0].pk}\"] [data-command=takeover]')"
                  ".hidden = false")
    press(tile, "Take over")
    tile.locator('[data-field="message"].error').wait_for(timeout=5000)
    assert "Cannot take over robot sim-01: it is stopped; start it first" in tile.inner_text()
    assert offered(tile) == ["Start", "Remove"]  # the answer carried the state as it is
    assert not AuditEvent.objects.filter(verb="robot.takeover").exists()
    shoot(session, tile, "refused")
    # Chromium reports the 409 answer itself as a console error; nothing else may appear.
    assert [e for e in session.console_errors if "409" not in e] == []


def test_a_robots_page_shows_its_history_and_follows_its_state(browser_session, olivia, fleet_with_history):
    _, version, robots = fleet_with_history
    robot = robots[0]
    control.start(robot, olivia, reason="shift begins")
    control.heartbeat(robot, Robot.Status.RUNNING)
    control.take_over(robot, olivia, reason="it hesitated at the shelf")
    ingested(version, robot)  # an episode with gate and operator segments
    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.get_by_role("link", name="sim-01", exact=True).click()
    page.wait_for_selector("#robot")
    assert page.url.endswith(f"/robots/{robot.pk}/")
    assert page.inner_text('#robot [data-field="status"]') == "operator in control"
    history = page.inner_text("table.history")
    assert "it hesitated at the shelf" in history and "shift begins" in history
    assert "operator takeover" in page.inner_text("table.interventions")
    assert "v1" in page.inner_text("table.versions")
    page.wait_for_selector("#live-state.on")
    control.stop(robot, olivia, reason="end of shift")  # elsewhere: the page follows the event
    page.wait_for_function("() => document.querySelector('#robot [data-field=status]').textContent === 'stopped'",
                           timeout=5000)
    assert offered(page.locator("#robot")) == ["Start", "Remove"]
    session.screenshot("robot-page")
    assert session.console_errors == []


def test_the_robot_api_docs_render_under_the_content_security_policy(chromium, web_server):
    """The browsable API docs (Swagger UI from ninja's own static files) work under the robot API's CSP: every
    endpoint is listed and the browser reports no blocked resource and no script error."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page, errors = context.new_page(), []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"http://{web_server}/api/v1/docs")
        try:
            page.wait_for_selector('.opblock-summary-path[data-path="/api/v1/episodes/{episode_uuid}"]',
                                   timeout=20_000)
        finally:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "robot-api-docs.png"), full_page=True)
        assert errors == []
        paths = set(page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path)"))
        assert {"/api/v1/whoami", "/api/v1/robots/{robot_id}/assignment",
                "/api/v1/robots/{robot_id}/evaluation-items/{item_id}/release"} <= paths
    finally:
        context.close()
