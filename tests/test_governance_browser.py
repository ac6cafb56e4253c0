"""Rollout governance in a real headless Chromium against the real web process: judging a continuously deployed
version on its page, switching the rollout mode, freezing deployments, redeploying a superseded version.

Each test leaves screenshots under var/test-screenshots/ (the path is printed at the end of the run).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditEvent
from fleet import control
from fleet.models import Robot, Task
from governance import decisions
from governance import mode as rollout_mode
from governance.decisions import deploy_to_fleet
from governance.models import RolloutControl
from learner.models import PolicyVersion, TrainingMetric, TrainingRun
from learner.signals import version_published
from tests.conftest import SCREENSHOTS, publish_random_policy
from tests.reviewing import ingest, synthetic

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.filterwarnings("ignore::UserWarning")]
TASKS = ["pick-place-v3", "shelf-place-v3"]


@pytest.fixture
def fleet(db):
    """Two robots on two tasks, running v1."""
    tasks = [Task.objects.create(env_name=name, title=name, max_steps=120) for name in TASKS]
    robots = [control.add(name, tasks=tasks) for name in ("sim-01", "sim-02")]
    v1 = publish_random_policy(1, TASKS)
    deploy_to_fleet(v1, reason="base policy")
    return tasks, robots, v1


def episodes(task, robot, version, *, autonomous: int, helped: int, failed: int, start):
    """Real ingestion (payload, segments, roll-ups) of episodes the policy won alone, won after the expert gate
    took over, or timed out."""
    n = 0
    for outcome, count, gate in (("success", autonomous, None), ("success", helped, slice(5, 15)),
                                 ("timeout", failed, None)):
        for _ in range(count):
            arrays = synthetic(steps=40, seed=n, gate=gate)
            arrays["success"][-1] = outcome == "success"
            ingest(task, arrays, seed=n, outcome=outcome, robot=robot, version=version,
                   finished_at=start + timedelta(seconds=10 * n))
            n += 1


def supervisor_in_continuous_mode(sam):
    rollout_mode.set_mode("continuous", sam, reason="let the fleet learn")


def test_a_continuously_deployed_version_is_judged_against_the_one_it_replaced(browser_session, sam, fleet):
    (pick, shelf), robots, v1 = fleet
    supervisor_in_continuous_mode(sam)
    start = timezone.now() - timedelta(minutes=10)
    episodes(pick, robots[0], v1, autonomous=3, helped=6, failed=3, start=start)
    episodes(shelf, robots[1], v1, autonomous=2, helped=2, failed=4, start=start)

    run = TrainingRun.objects.create(algorithm="hg_dagger", config={}, base_version=v1)
    for step in range(10, 50, 10):
        TrainingMetric.objects.create(run=run, step=step, loss=1.0 / step, samples_per_second=1000.0,
                                      tasks={t: {"w_on": 0.3 + step / 200} for t in TASKS})
    v2 = publish_random_policy(2, TASKS, seed=1)
    PolicyVersion.objects.filter(pk=v2.pk).update(parent=v1, config={"run": run.pk, "step": 40})
    v2.refresh_from_db()
    version_published.send(sender=PolicyVersion, version=v2)  # the learner's publication: continuous mode deploys
    v2.refresh_from_db()
    assert v2.state == PolicyVersion.State.DEPLOYED
    later = timezone.now() - timedelta(minutes=4)
    episodes(pick, robots[0], v2, autonomous=11, helped=1, failed=0, start=later)
    episodes(shelf, robots[1], v2, autonomous=5, helped=1, failed=2, start=later)

    session = browser_session(sam)
    page = session.page
    page.goto(f"{session.base_url}/rollouts/v2/")
    table = page.locator("#online-comparison")
    assert "v2: autonomous success" in table.inner_text() and "v1 (replaced)" in table.inner_text()
    pick_row = table.locator("tr", has_text="pick-place-v3")
    assert "0.92" in pick_row.inner_text() and "n=12" in pick_row.inner_text()  # 11 of 12 alone
    assert "0.25" in pick_row.inner_text() and "v2 better" in pick_row.inner_text()  # v1: 3 of 12 alone
    assert page.locator("#online-overall .cmp").inner_text() == "v2 better"
    assert "Not evaluated" in page.inner_text("#evaluation")  # and yet there is something to judge it by
    assert "Continuous mode deploys each version without an evaluation." in page.inner_text("#evaluation")

    for chart, title, y in (("chart-loss", "Training loss up to v2", "training loss"),
                            ("chart-share", "Online share ω_on per task up to v2", "online share ω_on")):
        page.wait_for_selector(f"#{chart} .main-svg")
        assert page.locator(f"#{chart} .gtitle").text_content() == title  # SVG text: no inner_text
        assert page.locator(f"#{chart} .xtitle").text_content() == "learner step"
        assert page.locator(f"#{chart} .ytitle").text_content() == y
    session.screenshot("version-page")
    page.locator("#online").screenshot(path=str(SCREENSHOTS / f"{session.name}-online-comparison.png"))
    assert session.console_errors == []


def test_a_supervisor_switches_the_rollout_mode(browser_session, sam, fleet, settings):
    settings.ROLLOUT_MODE = "manual"
    session = browser_session(sam)
    page = session.page
    page.goto(f"{session.base_url}/rollouts/")
    assert page.inner_text("#rollout-mode").startswith("rollouts: manual")
    assert "From ROLLOUT_MODE in the environment" in page.inner_text("#rollout-control")
    form = page.locator("#mode-form")
    form.locator("input[value=rules]").check()
    form.locator("textarea[name=reason]").fill("walk the next candidate through evaluation and a canary")
    form.get_by_role("button", name="Switch mode").click()
    page.wait_for_load_state("load")

    assert "Rollout mode set to rules" in page.inner_text("main")
    assert page.inner_text("#mode-now") == "rules"
    assert page.inner_text("#rollout-mode").startswith("rollouts: rules")  # the header, on every page
    assert "Set by sam at" in page.inner_text("#rollout-control")
    assert RolloutControl.objects.get().mode == "rules"
    event = AuditEvent.objects.get(verb="rollouts.set_mode")
    assert event.actor == sam and event.details == {"from": "manual", "to": "rules"}
    session.screenshot("rules")
    assert session.console_errors == []


def test_a_supervisor_freezes_deployments_and_a_promotion_is_refused(browser_session, sam, olivia, fleet):
    v2 = publish_random_policy(2, TASKS, seed=1)
    for verb in ("nominate", "start_evaluation", "finish_evaluation"):
        v2.advance(verb)
    session = browser_session(sam)
    page = session.page
    page.goto(f"{session.base_url}/rollouts/")
    form = page.locator("#freeze-form")
    form.locator("textarea[name=reason]").fill("incident 42: robots drop boxes at the shelf")
    form.get_by_role("button", name="Freeze deployments").click()
    page.wait_for_load_state("load")
    banner = page.locator("#freeze-banner")
    assert "Deployments are frozen" in banner.inner_text() and "incident 42" in banner.inner_text()
    assert "frozen" in page.inner_text("#rollout-mode").lower()
    session.screenshot("frozen")

    page.goto(f"{session.base_url}/rollouts/v2/")
    assert "Deployments are frozen" in page.inner_text("#frozen-note")
    promote = page.locator("form[action$='/promote/']")
    promote.locator("textarea[name=reason]").fill("evaluation looks fine")
    promote.get_by_role("button", name="Promote").click()
    page.wait_for_load_state("load")
    refusal = page.locator("p.message.error").inner_text()
    assert refusal.startswith("Cannot promote v2: deployments are frozen (by sam at ")
    assert "incident 42" in refusal and "roll backs stay possible" in refusal
    v2.refresh_from_db()
    assert v2.state == PolicyVersion.State.AWAITING_APPROVAL
    assert set(Robot.objects.values_list("policy_version__number", flat=True)) == {1}
    session.screenshot("promotion-refused")

    operator = browser_session(olivia)  # every page says so, for every role that sees it
    operator.page.goto(f"{operator.base_url}/fleet/")
    assert "incident 42" in operator.page.inner_text("#freeze-banner")
    operator.screenshot("fleet-frozen")

    page.goto(f"{session.base_url}/rollouts/")
    form = page.locator("#unfreeze-form")
    form.locator("textarea[name=reason]").fill("shelf fixed")
    form.get_by_role("button", name="Unfreeze").click()
    page.wait_for_load_state("load")
    assert page.locator("#freeze-banner").count() == 0
    assert list(AuditEvent.objects.filter(verb__startswith="rollouts.").order_by("id").values_list("verb", flat=True)) \
        == ["rollouts.freeze", "rollouts.unfreeze"]
    assert session.console_errors == [] and operator.console_errors == []


def test_a_supervisor_redeploys_a_superseded_version(browser_session, sam, fleet):
    _, _, v1 = fleet
    v2 = publish_random_policy(2, TASKS, seed=1)
    deploy_to_fleet(v2, reason="continuous mode")
    v0 = publish_random_policy(3, TASKS, seed=2)  # superseded long ago, its checkpoint since pruned
    PolicyVersion.objects.filter(pk=v0.pk).update(state="superseded", checkpoint_removed_at=timezone.now())

    session = browser_session(sam)
    page = session.page
    page.goto(f"{session.base_url}/rollouts/v3/")
    assert "cannot be redeployed: retention removed its checkpoint" in page.inner_text("#pruned-note")
    assert page.locator("#redeploy-form").count() == 0

    page.goto(f"{session.base_url}/rollouts/v1/")
    form = page.locator("#redeploy-form")
    assert "v2 is rolled back" in form.inner_text()
    form.locator("textarea[name=reason]").fill("v2 drops boxes; v1 did not")
    form.locator("input[name=freeze]").check()
    session.screenshot("redeploy-form")
    form.get_by_role("button", name="Redeploy v1").click()
    page.wait_for_load_state("load")

    assert "v1 redeployed to the whole fleet and deployments frozen." in page.inner_text("main")
    assert page.inner_text("#version-state") == "deployed"
    assert page.locator("#freeze-banner").count() == 1
    v2.refresh_from_db()
    assert v2.state == PolicyVersion.State.ROLLED_BACK
    assert set(Robot.objects.values_list("policy_version__number", flat=True)) == {1}
    assert AuditEvent.objects.get(verb="version.roll_back").details["returns_to"] == 1
    assert decisions.deployed_version() == v1
    session.screenshot("redeployed")
    assert session.console_errors == []
