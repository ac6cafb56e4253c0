"""Rollout governance on the real stack: Celery actor workers run MuJoCo robots that evaluate a candidate, run it
as a canary, run it fleet-wide and return from it; beat's canary check rolls a worse canary back by itself while
an operator's browser, connected to the real ASGI server, shows the alert."""
from __future__ import annotations

import io
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Robot, Task
from governance import decisions
from governance.decisions import deploy_to_fleet
from governance.models import Alert, EvaluationItem
from learner.models import PolicyVersion
from tests.conftest import publish_random_policy, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
S = PolicyVersion.State


def online(robot, after=None):
    rows = Episode.objects.filter(robot=robot, source=Episode.Source.ONLINE)
    return rows.filter(started_at__gt=after) if after else rows


def switched(robot, after, version) -> bool:
    """Every episode of `robot` that started after `after` ran `version`, but maybe the first: an episode reads its
    version when it is planned, before its scene is built and its clock starts, so the one being planned as a
    decision committed may still run the version before it."""
    versions = list(online(robot, after).order_by("started_at").values_list("policy_version", flat=True))
    return bool(versions) and all(v == version.pk for v in versions[1:])


def post(client, url, **data):
    response = client.post(url, data, follow=True)
    errors = [str(m) for m in response.context["messages"] if m.level_tag == "error"]
    assert response.status_code == 200 and not errors, errors
    return timezone.now()  # the decision has committed: every episode that starts later reads it


def test_a_candidate_is_evaluated_canaried_promoted_and_rolled_back_by_the_fleet(
        start_worker, client, sam, olivia, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 2
    tasks = [Task.objects.create(env_name=name, title=name, max_steps=60)
             for name in ("pick-place-v3", "shelf-place-v3")]
    names = [t.env_name for t in tasks]
    robots = []
    for name in ("sim-1", "sim-2", "sim-3"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set(tasks)
        robots.append(robot)
    v1 = publish_random_policy(1, names, seed=1)
    deploy_to_fleet(v1, reason="base")
    v2 = publish_random_policy(2, names, seed=2)
    worker = start_worker("fleet", queues="actors,default,control", concurrency=3, FLEET_REALTIME_FACTOR=0)
    for robot in robots:
        control.start(robot, olivia)
    client.force_login(sam)

    # Evaluation: the fleet runs both versions alone on the same held-out seeds, then it awaits approval.
    post(client, "/rollouts/v2/nominate/", reason="newest checkpoint")
    try:
        wait_for(lambda: PolicyVersion.objects.get(pk=v2.pk).state == S.AWAITING_APPROVAL, 180,
                 "the fleet to evaluate v2 and the evaluation to finish")
    except AssertionError as timeout:  # what the items and the worker were doing (docs/backlog.md, "Test suite")
        items = list(EvaluationItem.objects.values_list("version__number", "task__env_name", "robot_id",
                                                        "claimed_at", "episode_id"))
        raise AssertionError(f"{timeout}; items (version, task, robot, claimed, episode): {items}; worker log "
                             f"tail:\n{worker.log.read_bytes()[-6000:].decode(errors='replace')}") from None
    evaluated = set(Episode.objects.filter(source=Episode.Source.EVALUATION)
                    .values_list("policy_version__number", "task__env_name", "seed"))
    assert evaluated == {(v, t, s) for v in (1, 2) for t in names for s in (0, 1)}
    assert not Episode.objects.filter(source=Episode.Source.EVALUATION, intervention_steps__gt=0).exists()
    assert not EvaluationItem.objects.filter(episode=None).exists()
    assert not Episode.objects.filter(policy_version=v2, source=Episode.Source.ONLINE).exists()
    page = client.get("/rollouts/v2/")
    assert page.context["figures"]["done"] == page.context["figures"]["needed"] == 8

    # Canary: only sim-1 runs v2.
    canary_at = post(client, "/rollouts/v2/approve-canary/", reason="try it on one robot", robots=["sim-1"])
    wait_for(lambda: online(robots[0], canary_at).filter(policy_version=v2).count() >= 2
             and all(online(r, canary_at).count() >= 2 for r in robots[1:]), 120,
             "episodes of the canary and of the other robots")
    assert switched(robots[0], canary_at, v2)
    for robot in robots[1:]:
        assert set(online(robot, canary_at).values_list("policy_version", flat=True)) == {v1.pk}
    assert not Episode.objects.filter(policy_version=v2, source=Episode.Source.ONLINE).exclude(robot=robots[0]).exists()

    # Promotion: every robot runs v2.
    promoted_at = post(client, "/rollouts/v2/promote/", reason="canary holds up")
    wait_for(lambda: all(online(r, promoted_at).count() >= 2 for r in robots), 120, "episodes after the promotion")
    assert all(switched(robot, promoted_at, v2) for robot in robots)

    # Roll back: every robot returns to v1.
    rolled_back_at = post(client, "/rollouts/v2/roll-back/", reason="drops objects")
    wait_for(lambda: all(online(r, rolled_back_at).count() >= 2 for r in robots), 120,
             "episodes after the rollback")
    for robot in robots:
        control.stop(robot, olivia)
    assert all(switched(robot, rolled_back_at, v1) for robot in robots)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert v1.state == S.DEPLOYED and v2.state == S.ROLLED_BACK
    decided = list(AuditEvent.objects.filter(object_type="learner.policyversion", object_id=str(v2.pk), actor=sam)
                   .order_by("id")
                   .values_list("verb", flat=True))
    assert decided == ["version.nominate", "version.start_evaluation", "version.approve_canary", "version.promote",
                       "version.roll_back"]


def test_a_worse_canary_is_rolled_back_without_a_human_and_every_dashboard_shows_the_alert(
        start_worker, beat, browser_session, sam, olivia, tmp_path):
    task = Task.objects.create(env_name="button-press-topdown-v3", title="Button press", max_steps=150)
    robots = []
    for name in ("sim-canary", "sim-steady"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set([task])
        robots.append(robot)
    # The deployed version is cloned from ten expert demonstrations (it presses the button nearly every time);
    # the candidate is an untrained network (it never does).
    call_command("generate_demos", "--per-task", "10", stdout=io.StringIO())
    call_command("pretrain_base", "--demos-per-task", "10", "--steps", "1500", "--deploy", stdout=io.StringIO())
    v1 = PolicyVersion.objects.get(state=S.DEPLOYED)
    v2 = publish_random_policy(2, [task.env_name], seed=3)
    for verb in ("nominate", "start_evaluation", "finish_evaluation"):
        v2.advance(verb, sam)
    decisions.approve_canary(v2, sam, reason="let us see", robots=[robots[0]])

    session = browser_session(olivia)
    session.page.goto(session.base_url + "/fleet/")
    session.page.wait_for_selector("#live-state.on", timeout=15000)  # the page's socket is connected

    governance_env = {"GOVERNANCE_CHECK_SECONDS": 1, "GOVERNANCE_CANARY_MIN_EPISODES": 6,
                      "GOVERNANCE_CANARY_MARGIN": 0.3}
    start_worker("actors", queues="actors", concurrency=2, FLEET_REALTIME_FACTOR=0)
    start_worker("control", queues="control,default", **governance_env)
    beat(**governance_env)
    started = time.monotonic()
    for robot in robots:
        control.start(robot, olivia)

    wait_for(lambda: PolicyVersion.objects.get(pk=v2.pk).state == S.ROLLED_BACK, 240,
             "the canary check to roll the worse canary back")
    took = time.monotonic() - started
    event = AuditEvent.objects.get(verb="version.roll_back")
    canary = event.details["canary"]
    assert event.actor is None and event.reason.startswith("automatic:")
    assert canary["verdict"] == "worse" and canary["overall"]["candidate"]["episodes"] >= 6
    assert canary["overall"]["deployed"]["rate"] - canary["overall"]["candidate"]["rate"] > 0.3
    robots[0].refresh_from_db()
    assert robots[0].policy_version == v1
    alert = Alert.objects.get(status=Alert.Status.ACTIVE)

    # Live on the page that was open, and still there on a page loaded later.
    session.page.wait_for_selector("#alerts >> text=v2 was rolled back automatically", timeout=15000)
    session.page.goto(session.base_url + "/episodes/")
    assert session.page.locator(f'#alerts [data-alert="{alert.pk}"]').count() == 1
    assert session.console_errors == []

    back_at = timezone.now()
    wait_for(lambda: online(robots[0], back_at).exists(), 60, "the canary robot's next episode")
    for robot in robots:
        control.stop(robot, olivia)
    assert set(online(robots[0], back_at).values_list("policy_version", flat=True)) == {v1.pk}
    print(f"canary rolled back {took:.0f} s after the robots started: "
          f"canary {canary['overall']['candidate']}, deployed {canary['overall']['deployed']}")


def test_a_supervisor_decides_in_the_browser_and_another_dashboard_hears_of_it_live(
        browser_session, sam, olivia, settings):
    """The comparison page in Chromium: the figures, a canary approved by ticking a robot and giving a reason, and
    an operator's fleet page told about it as it happens."""
    from governance import evaluation
    from tests.test_governance import make_episode, make_version

    settings.GOVERNANCE_EVALUATION_EPISODES = 4
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=100)
    robots = []
    for name in ("sim-1", "sim-2"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set([task])
        robots.append(robot)
    v1 = make_version(1)
    deploy_to_fleet(v1, reason="base")
    v2 = make_version(2, parent=v1)
    decisions.nominate(v2, sam, reason="newest")
    for item in EvaluationItem.objects.select_related("version", "task"):
        evaluation.record(item, make_episode(robots[1], item.version, item.task, success=item.version == v2,
                                             source="evaluation", seed=item.seed))
    evaluation.finish_complete()

    watcher = browser_session(olivia)
    watcher.page.goto(watcher.base_url + "/fleet/")
    watcher.page.wait_for_selector("#live-state.on", timeout=15000)
    supervisor = browser_session(sam)
    supervisor.page.goto(supervisor.base_url + "/rollouts/v2/")
    page = supervisor.page
    assert page.locator("table.comparison tr.better").count() == 1  # 4/4 vs 0/4: the intervals separate
    form = page.locator("form[action='/rollouts/v2/approve-canary/']")
    form.locator("input[value='sim-1']").check()
    form.locator("textarea[name=reason]").fill("evaluation clearly better")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("text=v2 approved to a canary.")
    assert page.locator("#version-state").inner_text() == "canary"
    robots[0].refresh_from_db()
    assert robots[0].policy_version == v2

    watcher.page.wait_for_selector("#alerts >> text=sam: v2 approved to a canary", timeout=15000)
    page.goto(supervisor.base_url + "/rollouts/")
    assert "Waiting for episodes" in page.locator("#canary-verdict").inner_text()
    assert watcher.console_errors == [] and supervisor.console_errors == []
