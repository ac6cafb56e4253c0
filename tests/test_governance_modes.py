"""The rollout mode at run time, the deployment freeze and redeploying a superseded version: set by supervisors on
the Rollouts page, audited, kept in a row that outlives restarts (ROLLOUT_MODE only seeds it), obeyed at once by
every decision and rule. Real PostgreSQL and Redis; the robots are rows."""
from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.audit import IllegalTransition
from core.models import AuditEvent
from fleet.models import Robot
from governance import decisions, evaluation, rules
from governance import mode as rollout_mode
from governance.decisions import deploy_to_fleet
from governance.models import EvaluationItem, Rollout, RolloutControl
from learner.models import PolicyVersion
from learner.signals import version_published
from tests.test_governance import awaiting, in_canary, make_version

S = PolicyVersion.State


@pytest.fixture
def robots(tasks):
    rows = []
    for name in ("sim-1", "sim-2", "sim-3", "sim-4"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set(tasks)
        rows.append(robot)
    return rows


@pytest.fixture
def deployed(robots):
    """v1 runs on every robot."""
    version = make_version(1)
    deploy_to_fleet(version, reason="base policy")
    return version


def fleet_versions() -> set[int]:
    return set(Robot.objects.values_list("policy_version__number", flat=True))


# --- the mode ------------------------------------------------------------------------------------------------------


def test_until_a_supervisor_chooses_the_mode_is_rollout_mode_from_the_environment(db, settings):
    settings.ROLLOUT_MODE = "continuous"
    state = rollout_mode.current()
    assert (state.mode, state.frozen, state.chosen) == ("continuous", False, False)
    assert not RolloutControl.objects.exists()  # reading never writes the row


def test_a_supervisors_choice_is_kept_whatever_the_environment_says_after_a_restart(db, settings, sam):
    settings.ROLLOUT_MODE = "continuous"  # what `make demo` exports
    rollout_mode.set_mode("manual", sam, reason="hold the fleet for the audit")
    rollout_mode.forget()  # a restarted process: no copy of its own, the same environment
    state = rollout_mode.current()
    assert (state.mode, state.chosen, state.changed_by) == ("manual", True, "sam")
    event = AuditEvent.objects.get(verb="rollouts.set_mode")
    assert (event.actor, event.reason, event.details["from"], event.details["to"]) == (
        sam, "hold the fleet for the audit", "continuous", "manual")


def test_switching_to_continuous_deploys_the_next_published_version_in_every_mode_reader(deployed, settings, sam):
    settings.ROLLOUT_MODE = "manual"
    v2 = make_version(2, config={"run": 1, "step": 40})
    version_published.send(sender=PolicyVersion, version=v2)
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT

    rollout_mode.set_mode("continuous", sam, reason="let the fleet learn")
    v3 = make_version(3, config={"run": 1, "step": 80})
    version_published.send(sender=PolicyVersion, version=v3)
    v3.refresh_from_db()
    assert v3.state == S.DEPLOYED and fleet_versions() == {3}
    assert rules.summary()["rules"] == ["every published version goes straight to the whole fleet"]


def test_setting_the_mode_it_already_has_or_an_unknown_one_is_refused(db, sam, settings):
    settings.ROLLOUT_MODE = "manual"
    with pytest.raises(IllegalTransition, match="is manual already"):
        rollout_mode.set_mode("manual", sam)
    with pytest.raises(IllegalTransition, match="unknown rollout mode"):
        rollout_mode.set_mode("auto", sam)
    assert not AuditEvent.objects.filter(verb__startswith="rollouts.").exists()


def test_the_mode_is_read_from_a_copy_on_hot_paths_and_from_the_row_by_decisions(deployed, sam, settings,
                                                                                    monkeypatch):
    settings.ROLLOUT_MODE = "continuous"
    rollout_mode.set_mode("rules", sam, reason="x")
    rollout_mode.current()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(100):  # every publication, every episode's claim, every page header
            assert rollout_mode.current().mode == "rules"
    assert len(queries) == 0

    # Another process freezes: this process's copy does not know yet, a decision does.
    RolloutControl.objects.filter(pk=1).update(frozen=True, frozen_at=timezone.now(), freeze_reason="elsewhere")
    assert rollout_mode.current().frozen is False
    v2 = awaiting(2)
    with pytest.raises(IllegalTransition, match="deployments are frozen.*elsewhere"):
        decisions.promote(v2, sam, reason="go")
    # ... and the copy expires after MODE_CACHE_SECONDS.
    clock = time.monotonic() + rollout_mode.MODE_CACHE_SECONDS + 0.1
    monkeypatch.setattr(rollout_mode.time, "monotonic", lambda: clock)
    assert rollout_mode.current().frozen is True


def test_a_rule_obeys_a_mode_switched_by_another_process_at_once(deployed, settings, sam):
    """The learner's process may hold a copy that says continuous: the row under the rollout lock decides."""
    settings.ROLLOUT_MODE = "continuous"
    rollout_mode.current()  # this process's copy: no row, so continuous from the environment
    RolloutControl.objects.create(pk=1, mode="manual")  # a supervisor, through another web process
    assert rollout_mode.current().mode == "continuous"  # still the copy
    v2 = make_version(2, config={"run": 1, "step": 40})
    version_published.send(sender=PolicyVersion, version=v2)
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT and fleet_versions() == {1}


# --- the freeze ----------------------------------------------------------------------------------------------------


@pytest.fixture
def frozen(deployed, sam):
    rollout_mode.freeze(sam, reason="incident 42: robots drop boxes")
    return sam


def test_while_frozen_nothing_deploys_promotes_or_starts_a_canary(frozen, deployed, robots, settings, sam):
    v2 = awaiting(2)
    for attempt in (lambda: decisions.promote(v2, sam, reason="go"),
                    lambda: decisions.approve_canary(v2, sam, reason="go", robots=[robots[0]]),
                    lambda: deploy_to_fleet(make_version(3), sam, reason="by hand"),
                    lambda: version_published.send(sender=PolicyVersion, version=make_version(4), deploy=True)):
        with pytest.raises(IllegalTransition, match="deployments are frozen .*sam.*incident 42"):
            attempt()
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL and fleet_versions() == {1}
    assert not Rollout.objects.filter(version__number__gte=2).exists()


def test_while_frozen_no_rule_acts_and_continuous_mode_deploys_nothing(frozen, deployed, robots, tasks, settings):
    RolloutControl.objects.filter(pk=1).update(mode="continuous")
    rollout_mode.forget()
    v2 = make_version(2, config={"run": 1, "step": 40})
    version_published.send(sender=PolicyVersion, version=v2)  # the learner's publication: no error, no deploy
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT and fleet_versions() == {1}

    RolloutControl.objects.filter(pk=1).update(mode="rules")
    rollout_mode.forget()
    settings.GOVERNANCE_NOMINATE_EVERY_MINUTES = 1
    assert rules.nominate_newest() is None
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT


def test_while_frozen_robots_take_no_evaluation_episodes(deployed, robots, tasks, settings, sam):
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    decisions.nominate(make_version(2), sam, reason="evaluate")
    rollout_mode.freeze(sam, reason="incident")
    assert evaluation.claim(robots[0], tasks) is None
    rollout_mode.unfreeze(sam, reason="over")
    assert evaluation.claim(robots[0], tasks) is not None
    assert EvaluationItem.objects.exclude(claimed_at=None).count() == 1


def test_roll_backs_stay_possible_while_frozen(frozen, deployed, robots, sam):
    rollout_mode.unfreeze(sam, reason="setup")
    v2 = in_canary(2, [robots[0]])
    rollout_mode.freeze(sam, reason="incident")
    decisions.roll_back(v2, sam, reason="canary drops boxes")
    assert fleet_versions() == {1}

    rollout_mode.unfreeze(sam, reason="setup")
    v3 = awaiting(3)
    decisions.promote(v3, sam, reason="fine")
    rollout_mode.freeze(sam, reason="incident")
    decisions.roll_back(v3, sam, reason="night shift drops boxes")
    deployed.refresh_from_db()
    assert deployed.state == S.DEPLOYED and fleet_versions() == {1}


def test_freezing_and_unfreezing_are_audited_and_refused_twice(db, sam):
    rollout_mode.freeze(sam, reason="incident")
    with pytest.raises(IllegalTransition, match="frozen already"):
        rollout_mode.freeze(sam, reason="again")
    rollout_mode.unfreeze(sam, reason="over")
    with pytest.raises(IllegalTransition, match="not frozen"):
        rollout_mode.unfreeze(sam, reason="again")
    assert list(AuditEvent.objects.filter(verb__startswith="rollouts.").order_by("id")
                .values_list("verb", "reason")) == [("rollouts.freeze", "incident"), ("rollouts.unfreeze", "over")]
    row = RolloutControl.objects.get()
    assert row.frozen is False and row.frozen_by is None


# --- redeploying a superseded version --------------------------------------------------------------------------


@pytest.fixture
def superseded(deployed, robots, sam):
    """v1 ran on the whole fleet and was superseded by v2."""
    decisions.promote(awaiting(2), sam, reason="better")
    deployed.refresh_from_db()
    assert deployed.state == S.SUPERSEDED
    return deployed


def test_a_supervisor_redeploys_a_superseded_version_as_a_roll_back_to_it(superseded, robots, sam):
    decisions.redeploy(superseded, sam, reason="v2 drops boxes; v1 did not")
    v2 = PolicyVersion.objects.get(number=2)
    superseded.refresh_from_db()
    assert superseded.state == S.DEPLOYED and v2.state == S.ROLLED_BACK and fleet_versions() == {1}
    assert Rollout.objects.get(status=Rollout.Status.ACTIVE).version == superseded
    assert Rollout.objects.get(version=v2, stage="fleet").status == Rollout.Status.ROLLED_BACK
    back = AuditEvent.objects.get(verb="version.roll_back")
    assert back.object_repr == "v2" and back.details["returns_to"] == 1 and back.actor == sam
    deploy = AuditEvent.objects.filter(verb="version.deploy", object_id=str(superseded.pk)).latest("id")
    assert deploy.details["redeploy"] is True and deploy.details["replaces"] == 2
    assert deploy.reason == "v2 drops boxes; v1 did not" and deploy.actor == sam


def test_redeploying_is_refused_when_retention_removed_the_checkpoint(superseded, sam):
    PolicyVersion.objects.filter(pk=superseded.pk).update(checkpoint_removed_at=timezone.now())
    with pytest.raises(IllegalTransition, match="cannot redeploy v1: retention removed its checkpoint on .* so it "
                                                "can no longer run"):
        decisions.redeploy(superseded, sam, reason="go back")
    assert fleet_versions() == {2}


def test_redeploying_is_refused_while_a_canary_runs_and_for_versions_never_superseded(superseded, robots, sam):
    in_canary(3, [robots[0]])
    with pytest.raises(IllegalTransition, match="while v3 is in canary"):
        decisions.redeploy(superseded, sam, reason="go back")
    with pytest.raises(IllegalTransition, match="only a superseded version can be redeployed"):
        decisions.redeploy(make_version(4), sam, reason="skip the queue")


def test_redeploying_is_allowed_while_frozen(superseded, sam):
    rollout_mode.freeze(sam, reason="incident")
    decisions.redeploy(superseded, sam, reason="back to the known good one")
    assert fleet_versions() == {1}


# --- the pages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["olivia", "anna", "oscar", "anonymous"])
def test_only_supervisors_may_switch_the_mode_or_freeze(client, request, db, persona, settings):
    settings.ROLLOUT_MODE = "manual"
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    for url, data in (("/rollouts/mode/", {"mode": "continuous", "reason": "x"}),
                      ("/rollouts/freeze/", {"reason": "x"}), ("/rollouts/unfreeze/", {"reason": "x"})):
        response = client.post(url, data)
        assert response.status_code == (302 if persona == "anonymous" else 403), url
    assert not RolloutControl.objects.exists() and not AuditEvent.objects.exists()


def test_a_supervisor_switches_the_mode_and_freezes_from_the_rollouts_page(client, sam, olivia, deployed, settings):
    settings.ROLLOUT_MODE = "continuous"
    client.force_login(sam)
    html = client.get("/rollouts/").content.decode()
    assert "From <code>ROLLOUT_MODE</code> in the environment" in html and 'id="mode-form"' in html

    response = client.post("/rollouts/mode/", {"mode": "rules", "reason": "walk candidates through"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Rollout mode set to rules: the nomination and auto-canary rules act; promotion stays a person's decision."]
    assert 'id="mode-now">rules</b>' in response.content.decode()
    assert client.post("/rollouts/mode/", {"mode": "rules"}).status_code == 400  # no reason

    response = client.post("/rollouts/freeze/", {"reason": "incident 42"}, follow=True)
    assert RolloutControl.objects.get().frozen
    html = response.content.decode()
    assert 'id="freeze-banner"' in html and "incident 42" in html and 'id="unfreeze-form"' in html

    client.force_login(olivia)  # operators see the state and the banner, not the controls
    html = client.get("/rollouts/").content.decode()
    assert 'id="freeze-banner"' in html and 'id="mode-form"' not in html


def test_every_page_says_deployments_are_frozen(client, olivia, anna, sam, db):
    rollout_mode.freeze(sam, reason="incident 42")
    for user, page in ((olivia, "/fleet/"), (olivia, "/learner/"), (anna, "/review/"), (sam, "/rollouts/")):
        client.force_login(user)
        html = client.get(page).content.decode()
        assert 'id="freeze-banner"' in html and "incident 42" in html, page
        assert 'data-frozen="true"' in html, page
    rollout_mode.unfreeze(sam, reason="over")
    assert 'id="freeze-banner"' not in client.get("/rollouts/").content.decode()


def test_a_promotion_refused_while_frozen_is_explained_on_the_version_page(client, sam, deployed):
    v2 = awaiting(2)
    rollout_mode.freeze(sam, reason="incident 42")
    client.force_login(sam)
    html = client.get("/rollouts/v2/").content.decode()
    assert 'id="frozen-note"' in html
    response = client.post("/rollouts/v2/promote/", {"reason": "go"}, follow=True)
    (message,) = [str(m) for m in response.context["messages"]]
    assert message.startswith("Cannot promote v2: deployments are frozen (by sam at ")
    assert "incident 42" in message and "roll backs stay possible" in message
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL


def test_the_version_page_offers_a_redeploy_with_a_freeze_unless_the_checkpoint_is_gone(client, sam, superseded,
                                                                                       settings):
    settings.ROLLOUT_MODE = "continuous"
    client.force_login(sam)
    html = client.get("/rollouts/v1/").content.decode()
    assert 'action="/rollouts/v1/redeploy/"' in html and 'name="freeze" value="on" checked' in html

    response = client.post("/rollouts/v1/redeploy/", {"reason": "v2 drops boxes", "freeze": "on"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "v1 redeployed to the whole fleet and deployments frozen."]
    assert fleet_versions() == {1} and RolloutControl.objects.get().frozen
    freeze = AuditEvent.objects.get(verb="rollouts.freeze")
    assert freeze.reason == "with the redeploy of v1: v2 drops boxes"

    # Superseded again, then pruned: no redeploy, and a POST is refused with the reason.
    rollout_mode.unfreeze(sam, reason="over")
    decisions.promote(awaiting(3), sam, reason="better")
    PolicyVersion.objects.filter(number=1).update(checkpoint_removed_at=timezone.now())
    html = client.get("/rollouts/v1/").content.decode()
    assert "redeploy/" not in html and 'id="pruned-note"' in html
    response = client.post("/rollouts/v1/redeploy/", {"reason": "go back"}, follow=True)
    (message,) = [str(m) for m in response.context["messages"]]
    assert message.startswith("Cannot redeploy v1: retention removed its checkpoint")
    assert fleet_versions() == {3}


def test_a_failed_redeploy_does_not_leave_a_freeze_behind(client, sam, superseded, robots):
    in_canary(3, [robots[0]])
    client.force_login(sam)
    client.post("/rollouts/v1/redeploy/", {"reason": "go back", "freeze": "on"})
    assert not RolloutControl.objects.filter(frozen=True).exists()
    assert not AuditEvent.objects.filter(verb="rollouts.freeze").exists()
