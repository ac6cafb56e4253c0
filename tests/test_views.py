"""Every page requires login, and each role sees (and may do) only what its permissions allow."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from fleet.models import Episode, Robot, Task

PAGES = ["home", "fleet", "episodes", "breakdown", "learner", "versions", "audit", "rollouts", "experiments",
         "review-queue", "review-flags", "users", "webhooks"]
# persona -> page -> expected status for a GET (302 on "home" is the redirect to the role's landing page)
EXPECTED = {
    "olivia": {"home": 302, "fleet": 200, "episodes": 200, "breakdown": 200, "learner": 200, "versions": 200,
               "audit": 403, "rollouts": 200, "experiments": 200, "review-queue": 403, "review-flags": 200,
               "users": 403, "webhooks": 403},
    "sam": {"home": 302, "fleet": 200, "episodes": 200, "breakdown": 200, "learner": 200, "versions": 200,
            "audit": 200, "rollouts": 200, "experiments": 200, "review-queue": 403, "review-flags": 200,
            "users": 200, "webhooks": 200},
    "anna": {"home": 302, "fleet": 403, "episodes": 200, "breakdown": 200, "learner": 403, "versions": 403,
             "audit": 403, "rollouts": 403, "experiments": 403, "review-queue": 200, "review-flags": 403,
             "users": 403, "webhooks": 403},
    "oscar": {"home": 403, "fleet": 403, "episodes": 403, "breakdown": 403, "learner": 403, "versions": 403,
              "audit": 403, "rollouts": 403, "experiments": 403, "review-queue": 403, "review-flags": 403,
              "users": 403, "webhooks": 403},
}


@pytest.fixture
def robot(db):
    return Robot.objects.create(name="sim-01", status=Robot.Status.RUNNING, enabled=True,
                                last_heartbeat=timezone.now())


@pytest.mark.parametrize("page", PAGES + ["admin:index"])
def test_anonymous_users_are_sent_to_log_in(client, db, page):
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("persona", list(EXPECTED))
@pytest.mark.parametrize("page", PAGES)
def test_each_role_sees_its_own_pages(client, request, persona, page):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse(page)).status_code == EXPECTED[persona][page]


@pytest.mark.parametrize("persona, landing", [("olivia", "/fleet/"), ("sam", "/fleet/"), ("anna", "/review/")])
def test_home_sends_each_role_to_its_landing_page(client, request, persona, landing):
    client.force_login(request.getfixturevalue(persona))
    assert client.get("/")["Location"] == landing


@pytest.mark.parametrize("persona", list(EXPECTED))
def test_navigation_shows_only_the_pages_a_role_may_open(client, request, persona):
    client.force_login(request.getfixturevalue(persona))
    response = client.get(reverse("home"), follow=True)  # every persona gets a rendered page here
    nav = {item["name"] for item in response.context["nav_items"]}
    allowed = {page for page, code in EXPECTED[persona].items() if code == 200}
    assert nav == allowed


@pytest.mark.parametrize("persona, allowed", [("olivia", True), ("sam", False), ("anna", False), ("oscar", False)])
def test_only_operators_may_pause_a_robot(client, request, robot, persona, allowed):
    client.force_login(request.getfixturevalue(persona))
    response = client.post(reverse("robot-command", args=[robot.pk, "pause"]), {"reason": "check the gripper"})
    robot.refresh_from_db()
    if allowed:
        assert response.status_code == 302
        assert robot.status == Robot.Status.PAUSED
        assert AuditEvent.objects.get(verb="robot.pause").reason == "check the gripper"
    else:
        assert response.status_code == 403
        assert robot.status == Robot.Status.RUNNING
        assert not AuditEvent.objects.exists()


def test_anonymous_pause_is_sent_to_log_in_and_changes_nothing(client, robot):
    response = client.post(reverse("robot-command", args=[robot.pk, "pause"]))
    assert response.status_code == 302 and "/login/" in response["Location"]
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING


def test_pause_is_post_only(client, olivia, robot):
    client.force_login(olivia)
    assert client.get(reverse("robot-command", args=[robot.pk, "pause"])).status_code == 405
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING


def test_an_illegal_robot_command_is_explained_and_changes_nothing(client, olivia, robot):
    client.force_login(olivia)
    response = client.post(reverse("robot-command", args=[robot.pk, "resume"]), follow=True)
    assert "Cannot resume robot sim-01: it is running" in response.content.decode()
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING
    assert not AuditEvent.objects.exists()


def test_an_oversized_reason_is_rejected(client, olivia, robot):
    client.force_login(olivia)
    response = client.post(reverse("robot-command", args=[robot.pk, "pause"]), {"reason": "x" * 2001})
    assert response.status_code == 400
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING


def test_unknown_robot_is_404(client, olivia, db):
    client.force_login(olivia)
    assert client.post(reverse("robot-command", args=[999999, "pause"])).status_code == 404


def test_the_fleet_page_shows_controls_only_to_operators(client, olivia, sam, robot):
    pause_url = reverse("robot-command", args=[robot.pk, "pause"])
    client.force_login(olivia)
    assert pause_url in client.get(reverse("fleet")).content.decode()
    client.force_login(sam)
    assert pause_url not in client.get(reverse("fleet")).content.decode()


def test_episodes_page_through_with_a_keyset_cursor(client, anna):
    task = Task.objects.create(env_name="box-close-v3", title="Box close")
    start = timezone.now() - timedelta(hours=1)
    for i in range(120):
        Episode.objects.create(task=task, seed=i, outcome=Episode.Outcome.FAILURE, steps=500, total_return=0.0,
                               started_at=start, finished_at=start + timedelta(seconds=i))
    client.force_login(anna)
    seen = []
    url = reverse("episodes") + "?task=box-close-v3"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += [episode.seed for episode in response.context["episodes"]]
        next_query = response.context["next_query"]
        url = reverse("episodes") + "?" + next_query if next_query else None
    assert seen == list(range(119, -1, -1))  # newest first, each exactly once


@pytest.mark.parametrize("query", ["after=garbage", "outcome=exploded", "task=no-such-task-v3"])
def test_bad_episode_filters_get_a_clear_400(client, anna, query):
    client.force_login(anna)
    response = client.get(reverse("episodes") + "?" + query)
    assert response.status_code == 400
    assert response.context["form"].errors


def test_every_demo_role_can_log_in(client, db, settings):
    settings.DEMO_MODE = True  # seed_demo runs only in demo mode (tests/test_accounts.py)
    call_command("seed_demo", robots=2, stdout=open("/dev/null", "w"))
    for username in ["operator", "supervisor", "annotator", "admin"]:
        response = client.post(reverse("login"), {"username": username, "password": f"{username}-demo"})
        assert response.status_code == 302, username
        assert client.get("/", follow=True).status_code == 200, username
        client.logout()
    assert Robot.objects.count() == 2 and Task.objects.count() == 4


def test_a_wrong_password_is_refused(client, olivia):
    response = client.post(reverse("login"), {"username": "olivia", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def learner_curves(client, query: str = "") -> dict:
    import json

    response = client.get(reverse("learner") + query)
    assert response.status_code == 200, response.content.decode()[:2000]
    html = response.content.decode()
    assert "vendor/plotly.min.js" in html and "js/learner.js" in html
    return json.loads(html.split('id="learner-curves" type="application/json">')[1].split("</script>")[0])


def metric(run, step, at, **fields):
    from learner.models import TrainingMetric

    defaults = {"loss": 1.0 / step, "samples_per_second": 5000.0, "staleness_mean": 0.5, "staleness_max": 1,
                "tasks": {"pick-place-v3": {"w_on": 0.6, "l_on": 0.1, "l_off": 0.05,
                                            "buffer": {"online": 10, "offline": 20}}}}
    return TrainingMetric(run=run, step=step, created_at=at, **{**defaults, **fields})


def test_the_learner_page_carries_its_curves_and_versions(client, sam):
    from django.utils import timezone

    from learner.models import PolicyVersion, TrainingMetric, TrainingRun

    base = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="p", checkpoint_sha256="0" * 64)
    run = TrainingRun.objects.create(algorithm="hg_dagger", base_version=base)
    now = timezone.now()
    TrainingMetric.objects.bulk_create(metric(run, step, now - timedelta(minutes=30 - step // 10))
                                       for step in (50, 100, 150))
    client.force_login(sam)
    data = learner_curves(client)
    [line] = data["runs"]
    assert [p["step"] for p in line["points"]] == [50, 100, 150] and line["restarts"] == []
    assert line["points"][-1]["tasks"]["pick-place-v3"]["w_on"] == 0.6
    assert data["window"]["label"] == "last 6 hours" and data["versions"][0]["number"] == 1

    # A long run is thinned by time: the last point of each of at most 300 buckets, the latest point always in.
    TrainingMetric.objects.bulk_create(metric(run, step, now - timedelta(seconds=3200 - step // 10))
                                       for step in range(200, 200 + 30_000, 10))
    [line] = learner_curves(client)["runs"]
    steps = [p["step"] for p in line["points"]]
    assert steps[-1] == 30_190 and len(steps) in (42, 43) and steps == sorted(steps)  # 50 min in 72-s buckets
    # A narrower window reads only its own points.
    [line] = learner_curves(client, "?window=15m")["runs"]
    assert min(p["step"] for p in line["points"]) >= (3200 - 900) * 10 - 100


def test_the_learner_page_draws_a_restarted_run_as_one_line_and_marks_the_restart(client, sam):
    """Steps 50..1000 written, then a crash: the state saved at 700 resumes, repeats 750..1000 and goes on. The lost
    750..1000 are not drawn (no saw-tooth), the restart is listed with what it lost."""
    from django.utils import timezone

    from learner.models import PolicyVersion, TrainingMetric, TrainingRun

    base = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="p", checkpoint_sha256="0" * 64)
    run = TrainingRun.objects.create(algorithm="hg_dagger", base_version=base)
    start = timezone.now() - timedelta(minutes=10)
    rows = [metric(run, step, start + timedelta(seconds=step // 10)) for step in range(50, 1001, 50)]
    restart_at = start + timedelta(seconds=130)
    rows += [metric(run, step, restart_at + timedelta(seconds=(step - 750) // 10),
                    resumed_from=700 if step == 750 else None) for step in range(750, 1501, 50)]
    TrainingMetric.objects.bulk_create(rows)
    client.force_login(sam)
    [line] = learner_curves(client, "?window=15m")["runs"]  # 3-second buckets: every point of this run
    steps = [p["step"] for p in line["points"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one line, never back
    assert steps[:14] == list(range(50, 701, 50)) and steps[-1] == 1500
    times = [p["at"] for p in line["points"]]
    assert times == sorted(times)
    [restart] = line["restarts"]
    assert (restart["resumed_from"], restart["step"], restart["lost"]) == (700, 750, 300)
    assert restart["at"] == restart_at.isoformat()


def test_the_learner_page_refuses_a_bad_window_and_still_renders(client, sam):
    from learner.models import PolicyVersion, TrainingRun

    base = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="p", checkpoint_sha256="0" * 64)
    TrainingRun.objects.create(algorithm="hg_dagger", base_version=base)
    client.force_login(sam)
    for query, message in (("?window=forever", "forever is not one of the available choices"),
                           ("?window=custom&since=2026-11-20T10:00", "needs both"),
                           ("?window=custom&since=2026-11-20T10:00&until=2026-11-20T09:00", "must come before"),
                           ("?window=custom&since=2026-01-01T10:00&until=2026-11-20T09:00", "at most 31 days"),
                           ("?window=custom&since=nonsense&until=2026-11-20T09:00", "valid date/time")):
        response = client.get(reverse("learner") + query)
        html = response.content.decode()
        assert response.status_code == 400 and message in html, (query, html[:3000])
        assert 'id="window-errors"' in html and 'id="learner-curves"' in html  # the default window instead


def test_the_episode_page_carries_its_time_series(client, anna, oscar):
    import json
    import uuid as uuid_lib

    from fleet.ingest import ingest_episode
    from tests.factories import make_arrays

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    now = timezone.now()
    episode, _ = ingest_episode(uuid=uuid_lib.uuid4(), task=task.env_name, seed=3, outcome="timeout",
                                arrays=make_arrays(steps=50), started_at=now - timedelta(seconds=1), finished_at=now)
    client.force_login(anna)
    html = client.get(reverse("episode", args=[episode.pk])).content.decode()
    series = json.loads(html.split('id="episode-series" type="application/json">')[1].split("</script>")[0])
    assert len(series["action"]) == 4 and len(series["action"][0]) == 50
    assert [s["source"] for s in series["segments"]] == ["gate", "operator"]
    client.force_login(oscar)
    assert client.get(reverse("episode", args=[episode.pk])).status_code == 403
    client.force_login(anna)
    assert client.get(reverse("episode", args=[999999])).status_code == 404


def test_a_refused_request_is_one_log_line_and_a_server_error_keeps_its_traceback(client, anna, caplog):
    import logging
    import sys

    from core.logs import ClientErrorsOnOneLine

    client.force_login(anna)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get(reverse("audit")).status_code == 403  # PermissionDenied, raised in the view
        assert client.get(reverse("robot-command", args=[999_999, "pause"])).status_code in (403, 404, 405)
    refusals = [record for record in caplog.records if record.name == "django.request"]
    assert refusals and all(record.exc_info is None for record in refusals)
    assert all("\n" not in logging.Formatter().format(record) for record in refusals)
    try:
        raise RuntimeError("a fault")
    except RuntimeError:
        fault = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error", None,
                                  sys.exc_info())
    fault.status_code = 500
    assert ClientErrorsOnOneLine().filter(fault) and fault.exc_info is not None


def test_every_page_carries_a_content_security_policy_that_runs_only_our_own_scripts(client, sam):
    client.force_login(sam)
    for page in PAGES:
        response = client.get(reverse(page), follow=True)
        policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";")
                      if part.strip())
        assert policy["script-src"] == "'self'", page  # no inline script, no eval, no other origin
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'", page
        assert "'self'" in policy["connect-src"] and "'self'" in policy["media-src"], page


def test_the_learner_page_shows_its_gradient_steps_per_second(client, sam):
    """What a newcomer watches to see the learner go (issue 16, point 8): samples/s over the run's batch size."""
    from django.utils import timezone

    from learner.models import PolicyVersion, TrainingRun

    base = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="p", checkpoint_sha256="0" * 64)
    run = TrainingRun.objects.create(algorithm="hg_dagger", base_version=base, config={"batch_size": 256})
    metric(run, 50, timezone.now() - timedelta(minutes=1), samples_per_second=12800.0).save()
    client.force_login(sam)
    page = client.get("/learner/").content.decode()
    assert '<span class="label">Steps/s</span> <strong id="kpi-steps">50.0</strong>' in page
