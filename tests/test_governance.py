"""Rollout governance: the lifecycle of a version, evaluation by the fleet, canary analysis, rules, and the pages
and decision POSTs supervisors use. Real PostgreSQL and Redis; the robots here are rows (the real robots run in
tests/test_governance_stack.py)."""
from __future__ import annotations

import csv
import io
from datetime import timedelta
from functools import partial

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from core.audit import IllegalTransition
from core.models import AuditEvent
from fleet.models import Episode, Robot, Task
from governance import decisions, evaluation, rules
from governance.analysis import canary_analysis
from governance.decisions import deploy_to_fleet
from governance.models import Alert, Evaluation, EvaluationItem, Rollout
from governance.tasks import check
from learner.loop import EpisodeCursor
from learner.models import PolicyVersion, TrainingMetric, TrainingRun
from learner.signals import version_published
from tests.conftest import at_the_same_instant, make_user

S = PolicyVersion.State


def make_version(number: int, **fields) -> PolicyVersion:
    return PolicyVersion.objects.create(number=number, algorithm="bc", checkpoint_path=f"policies/v{number}",
                                        checkpoint_sha256="0" * 64, **fields)


def make_episode(robot, version, task, *, success=True, helped=False, source=Episode.Source.ONLINE, seed=1 << 30,
                 started_at=None, steps=50):
    started = started_at or timezone.now()
    return Episode.objects.create(
        robot=robot, policy_version=version, task=task, source=source, seed=seed,
        outcome=Episode.Outcome.SUCCESS if success else Episode.Outcome.TIMEOUT, steps=steps, total_return=1.0,
        intervention_steps=10 if helped else 0, started_at=started, finished_at=started + timedelta(seconds=1))


def audit_verbs(version) -> list[str]:
    return list(AuditEvent.objects.filter(object_type="learner.policyversion", object_id=str(version.pk))
                .order_by("created_at", "id").values_list("verb", flat=True))


def claim_all(tasks) -> list[EvaluationItem]:
    """Every item there is to claim, each by a robot of its own (a robot holds one unrun item at a time)."""
    claimed = []
    while True:
        robot = Robot.objects.create(name=f"claimer-{EvaluationItem.objects.count()}-{len(claimed)}")
        robot.tasks.set(tasks)
        if (item := evaluation.claim(robot, tasks)) is None:
            return claimed
        claimed.append(item)


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


def awaiting(number: int) -> PolicyVersion:
    """A version whose evaluation is done (the steps themselves are tested below)."""
    version = make_version(number)
    for verb in ("nominate", "start_evaluation", "finish_evaluation"):
        version.advance(verb)
    return version


def in_canary(number: int, robots) -> PolicyVersion:
    version = awaiting(number)
    decisions.approve_canary(version, None, reason="setup", robots=robots)
    return version


# --- lifecycle ------------------------------------------------------------------------------------------------


def test_a_version_goes_from_checkpoint_to_canary_to_deployed_with_one_audit_row_per_step(deployed, robots, sam):
    v2 = make_version(2)
    decisions.nominate(v2, sam, reason="looks good on the curves")
    assert v2.state == S.EVALUATING
    # nobody ran the evaluation items: finish by hand
    v2.advance("finish_evaluation", sam)
    rollout = decisions.approve_canary(v2, sam, reason="try it on one robot", robots=[robots[0]])
    robots[0].refresh_from_db()
    assert v2.state == S.CANARY and robots[0].policy_version == v2
    assert rollout.stage == Rollout.Stage.CANARY and list(rollout.robots.all()) == [robots[0]]
    assert set(Robot.objects.exclude(pk=robots[0].pk).values_list("policy_version", flat=True)) == {deployed.pk}

    decisions.promote(v2, sam, reason="canary fine")
    deployed.refresh_from_db()
    rollout.refresh_from_db()
    assert v2.state == S.DEPLOYED and deployed.state == S.SUPERSEDED
    assert rollout.status == Rollout.Status.PROMOTED
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {v2.pk}
    assert audit_verbs(v2) == ["version.nominate", "version.start_evaluation", "version.finish_evaluation",
                               "version.approve_canary", "version.promote"]
    promote = AuditEvent.objects.get(verb="version.promote")
    assert promote.actor == sam and promote.reason == "canary fine"
    assert promote.details["canary"]["candidate"] == 2  # the figures the decision was made on


@pytest.mark.parametrize("state, decision", [
    (S.CHECKPOINT, "promote"), (S.CHECKPOINT, "approve_canary"), (S.CANDIDATE, "approve_canary"),
    (S.EVALUATING, "promote"), (S.REJECTED, "roll_back"), (S.DEPLOYED, "reject"), (S.ROLLED_BACK, "nominate"),
])
def test_an_illegal_decision_raises_and_changes_nothing(deployed, robots, state, decision):
    version = make_version(2, state=state)
    audit_before, rollouts_before = AuditEvent.objects.count(), Rollout.objects.count()
    kwargs = {"robots": [robots[0]]} if decision == "approve_canary" else {}
    with pytest.raises(IllegalTransition, match="cannot"):
        getattr(decisions, decision)(version, None, reason="no", **kwargs)
    version.refresh_from_db()
    assert version.state == state
    assert AuditEvent.objects.count() == audit_before and Rollout.objects.count() == rollouts_before
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {deployed.pk}


def test_a_canary_keeps_at_least_one_robot_on_the_deployed_version(deployed, robots):
    v2 = awaiting(2)
    with pytest.raises(IllegalTransition, match="at least one"):
        decisions.approve_canary(v2, None, robots=robots)
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL and not Rollout.objects.filter(stage="canary").exists()
    rollout = decisions.approve_canary(v2, None, share=0.5)  # 2 of the 4 robots
    assert rollout.robots.count() == 2


def test_only_one_canary_runs_at_a_time(deployed, robots):
    in_canary(2, [robots[0]])
    v3 = awaiting(3)
    with pytest.raises(IllegalTransition, match="v2 is in canary already"):
        decisions.approve_canary(v3, None, robots=[robots[1]])
    with pytest.raises(IllegalTransition, match="v2 is in canary"):
        decisions.promote(v3, None)


def test_rolling_back_a_canary_returns_its_robots_to_the_deployed_version(deployed, robots, sam):
    v2 = in_canary(2, robots[:2])
    decisions.roll_back(v2, sam, reason="grips too hard")
    assert v2.state == S.ROLLED_BACK
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {deployed.pk}
    assert Rollout.objects.get(stage="canary").status == Rollout.Status.ROLLED_BACK
    deployed.refresh_from_db()
    assert deployed.state == S.DEPLOYED


def test_rolling_back_a_promoted_version_returns_the_fleet_to_the_one_before(deployed, robots, sam):
    v2 = in_canary(2, [robots[0]])
    decisions.promote(v2, sam, reason="fine")
    decisions.roll_back(v2, sam, reason="drops boxes at night")
    deployed.refresh_from_db()
    assert v2.state == S.ROLLED_BACK and deployed.state == S.DEPLOYED
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {deployed.pk}
    assert Rollout.objects.get(status=Rollout.Status.ACTIVE).version == deployed
    event = AuditEvent.objects.get(verb="version.roll_back")
    assert event.details["returns_to"] == 1 and event.actor == sam


def test_the_first_deployed_version_cannot_be_rolled_back_to_nothing(deployed):
    with pytest.raises(IllegalTransition, match="no earlier version"):
        decisions.roll_back(deployed, None, reason="no")
    deployed.refresh_from_db()
    assert deployed.state == S.DEPLOYED


# --- evaluation by the fleet --------------------------------------------------------------------------------------


def test_an_evaluation_plans_the_same_held_out_seeds_for_the_candidate_and_the_deployed_version(
        deployed, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 3
    v2 = make_version(2)
    decisions.nominate(v2, None, reason="rule")
    plan = set(EvaluationItem.objects.values_list("version__number", "task__env_name", "seed"))
    assert plan == {(v, t.env_name, s) for v in (1, 2) for t in tasks for s in (0, 1, 2)}

    # The deployed version's episodes serve the next candidate too: only the new candidate's items are added.
    v3 = make_version(3)
    decisions.nominate(v3, None, reason="rule")
    assert EvaluationItem.objects.count() == 3 * 2 * 3
    assert Evaluation.objects.get(candidate=v3).baseline == deployed


def test_robots_claim_items_of_their_tasks_once_and_the_last_result_finishes_the_evaluation(
        deployed, robots, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    v2 = make_version(2)
    decisions.nominate(v2, None, reason="rule")
    robots[0].tasks.set([tasks[0]])
    first = evaluation.claim(robots[0], [tasks[0]])
    second = evaluation.claim(robots[1], tasks)
    assert first.task == tasks[0] and first.pk != second.pk and first.robot == robots[0]

    # A result someone helped with does not count: the item goes back to the pool.
    assert not evaluation.record(first, make_episode(robots[0], first.version, first.task, helped=True,
                                                     source="evaluation", seed=first.seed))
    first.refresh_from_db()
    assert first.claimed_at is None and first.episode is None

    claimed = claim_all(tasks)
    assert {i.pk for i in claimed} | {second.pk} == set(EvaluationItem.objects.values_list("pk", flat=True))
    for item in [second, *claimed]:
        ok = item.version == v2 or item.task == tasks[1]  # v2 fails on pick-place; everything else succeeds
        evaluation.record(item, make_episode(robots[2], item.version, item.task, success=ok, source="evaluation",
                                             seed=item.seed))
    assert [e.candidate for e in evaluation.finish_complete()] == [v2]
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL
    figures = AuditEvent.objects.get(verb="version.finish_evaluation").details["figures"]
    rows = {row["task"]: row for row in figures["tasks"]}
    assert rows["pick-place-v3"]["candidate"]["successes"] == 1 and rows["pick-place-v3"]["deployed"]["successes"] == 0
    assert figures["done"] == figures["needed"] == 4


def test_a_stale_claim_is_claimable_again(deployed, robots, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    decisions.nominate(make_version(2), None, reason="rule")
    items = EvaluationItem.objects.count()
    taken = claim_all(tasks)
    assert len(taken) == items and evaluation.claim(robots[1], tasks) is None
    EvaluationItem.objects.filter(pk=taken[0].pk).update(claimed_at=timezone.now() - evaluation.CLAIM_TIMEOUT * 2)
    assert evaluation.claim(robots[1], tasks).pk == taken[0].pk


def test_a_robot_gets_the_item_it_claimed_and_never_ran_again_before_any_other(deployed, robots, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 3
    decisions.nominate(make_version(2), None, reason="rule")
    first = evaluation.claim(robots[0], tasks)
    claimed_at = timezone.now() - timedelta(seconds=60)
    EvaluationItem.objects.filter(pk=first.pk).update(claimed_at=claimed_at)
    again = evaluation.claim(robots[0], tasks)  # its plan fell through (say, a failed download): asked again
    # The same item, its claim's clock running on: a robot that never runs it loses it at the timeout.
    assert again.pk == first.pk and again.claimed_at == claimed_at
    assert evaluation.claim(robots[1], tasks).pk != first.pk
    # A stale claim released late takes nothing from the robot that has the item since.
    EvaluationItem.objects.filter(pk=first.pk).update(claimed_at=timezone.now() - evaluation.CLAIM_TIMEOUT * 2)
    taken = evaluation.claim(robots[3], tasks)
    assert taken.pk == first.pk
    evaluation.release(again)  # robot 0's, long stale
    taken.refresh_from_db()
    assert taken.robot == robots[3] and taken.claimed_at is not None
    evaluation.release(taken)
    assert evaluation.claim(robots[0], tasks).pk == first.pk
    again = EvaluationItem.objects.get(pk=first.pk)
    # Once it has its episode, the robot gets the next item.
    evaluation.record(again, make_episode(robots[0], again.version, again.task, source="evaluation", seed=again.seed))
    assert evaluation.claim(robots[0], tasks).pk not in (first.pk,)
    # A task the robot no longer runs is not handed again (the claim waits out its timeout, or a release).
    robots[2].tasks.set(tasks)
    held = evaluation.claim(robots[2], tasks)
    other = [t for t in tasks if t != held.task]
    assert evaluation.claim(robots[2], other).task in other


def test_rejecting_a_candidate_drops_its_pending_evaluation_episodes(deployed, sam):
    v2 = make_version(2)
    decisions.nominate(v2, sam, reason="try")
    decisions.reject(v2, sam, reason="changed our minds")
    assert not EvaluationItem.objects.filter(version=v2).exists()
    assert EvaluationItem.objects.filter(version=deployed).exists()  # kept for the next candidate's comparison


def test_robots_run_only_the_evaluation_episodes_a_running_evaluation_needs(deployed, robots, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    v2 = make_version(2)
    decisions.nominate(v2, None, reason="rule")
    decisions.reject(v2, None, reason="changed our minds")
    assert evaluation.claim(robots[0], tasks) is None  # v1's items wait for the next candidate

    v3 = make_version(3)
    decisions.nominate(v3, None, reason="rule")
    # v1 is superseded mid-evaluation: v3 is still compared with v1, so v1's episodes are still run.
    deploy_to_fleet(make_version(4), reason="hotfix")
    claimed = claim_all(tasks)
    assert {(i.version.number, i.task.env_name) for i in claimed} == {(v, t.env_name) for v in (1, 3) for t in tasks}
    assert all(i.seed == 0 for i in claimed)


@pytest.mark.django_db(transaction=True)
def test_a_candidate_whose_checkpoint_cannot_be_loaded_is_rejected_and_the_robot_runs_on(tasks, settings,
                                                                                          monkeypatch):
    from actors.runner import run_robot_episode
    from tests.conftest import publish_random_policy

    # The actor runs in this process: no prefetch listener or torch thread setting left behind for other tests.
    monkeypatch.setattr("actors.runner._torch_ready", True)
    settings.FLEET_REALTIME_FACTOR = 0
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    for task in tasks:
        Task.objects.filter(pk=task.pk).update(max_steps=20)
    v1 = publish_random_policy(1, [t.env_name for t in tasks])
    robot = Robot.objects.create(name="sim-1", enabled=True)
    robot.tasks.set(tasks)
    deploy_to_fleet(v1, reason="base")
    broken = make_version(2)  # its checkpoint files do not exist
    decisions.nominate(broken, None, reason="rule")

    assert run_robot_episode(robot.pk) == "candidate unloadable"
    broken.refresh_from_db()
    assert broken.state == S.REJECTED and not EvaluationItem.objects.filter(version=broken).exists()
    assert "cannot be loaded" in Alert.objects.get(status=Alert.Status.ACTIVE).message
    assert run_robot_episode(robot.pk) in ("success", "timeout")
    assert Episode.objects.get().policy_version == v1


@pytest.mark.django_db(transaction=True)
def test_an_evaluation_episode_that_fails_gives_its_item_back_at_once(tasks, settings, monkeypatch):
    """A robot whose evaluation episode ends in an error (here the simulator's) does not hold its item for
    CLAIM_TIMEOUT: the next robot to start an episode runs it, and the evaluation finishes."""
    from actors import runner
    from tests.conftest import publish_random_policy

    monkeypatch.setattr("actors.runner._torch_ready", True)
    settings.FLEET_REALTIME_FACTOR = 0
    settings.GOVERNANCE_EVALUATION_EPISODES = 1
    for task in tasks:
        Task.objects.filter(pk=task.pk).update(max_steps=20)
    names = [t.env_name for t in tasks]
    robot = Robot.objects.create(name="sim-1", enabled=True)
    robot.tasks.set(tasks)
    deploy_to_fleet(publish_random_policy(1, names), reason="base")
    v2 = publish_random_policy(2, names, seed=2)
    decisions.nominate(v2, None, reason="rule")

    def broken_simulator(*args, **kwargs):
        raise RuntimeError("the simulator lost its scene")

    monkeypatch.setattr("fleet.sim.actor.run_episode", broken_simulator)  # the runner imports it per episode
    with pytest.raises(RuntimeError, match="lost its scene"):
        runner.run_robot_episode(robot.pk)
    assert EvaluationItem.objects.filter(claimed_at__isnull=False).count() == 0  # given back, not held
    assert EvaluationItem.objects.filter(episode=None).count() == 4

    monkeypatch.undo()
    monkeypatch.setattr("actors.runner._torch_ready", True)
    for _ in range(4):
        assert runner.run_robot_episode(robot.pk) in ("success", "timeout")
    assert not EvaluationItem.objects.filter(episode=None).exists()
    assert [e.candidate for e in evaluation.finish_complete()] == [v2]


def test_evaluation_episodes_are_kept_out_of_training(deployed, robots, tasks):
    online = make_episode(robots[0], deployed, tasks[0])
    make_episode(robots[0], deployed, tasks[0], source=Episode.Source.EVALUATION, seed=0)
    assert [e.pk for e in EpisodeCursor().new_episodes(100)] == [online.pk]


# --- canary analysis and the automatic rollback -------------------------------------------------------------------


def test_the_canary_analysis_waits_for_enough_episodes_then_says_ready(deployed, robots, tasks, settings):
    settings.GOVERNANCE_CANARY_MIN_EPISODES = 4
    settings.GOVERNANCE_CANARY_MARGIN = 0.2
    v2 = in_canary(2, [robots[0]])
    rollout = decisions.active_canary()
    make_episode(robots[1], deployed, tasks[0], started_at=rollout.created_at - timedelta(seconds=5))  # before
    for i in range(3):
        make_episode(robots[0], v2, tasks[0], success=i > 0)
        make_episode(robots[1], deployed, tasks[0])
    assert canary_analysis(rollout)["verdict"] == "waiting"
    make_episode(robots[0], v2, tasks[0])
    make_episode(robots[1], deployed, tasks[0], helped=True)  # success with help does not count as success
    analysis = canary_analysis(rollout)
    assert analysis["overall"]["candidate"]["successes"] == 3 and analysis["overall"]["deployed"]["successes"] == 3
    assert analysis["overall"]["deployed"]["episodes"] == 4
    assert analysis["verdict"] == "ready"


def test_a_worse_canary_is_rolled_back_automatically_with_an_alert_on_every_page(
        deployed, robots, tasks, settings, client, olivia, sam, anna, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_CANARY_MIN_EPISODES = 3
    settings.GOVERNANCE_CANARY_MARGIN = 0.3
    v2 = in_canary(2, [robots[0]])
    for _ in range(3):
        make_episode(robots[0], v2, tasks[0], success=False)
        make_episode(robots[1], deployed, tasks[0])
        make_episode(robots[2], deployed, tasks[1])  # a task the canary did not run is not compared
    with django_capture_on_commit_callbacks(execute=True):
        result = check.apply().get()
    assert result["canaries"] == {2: "worse"}
    v2.refresh_from_db()
    assert v2.state == S.ROLLED_BACK
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {deployed.pk}
    event = AuditEvent.objects.get(verb="version.roll_back")
    assert event.actor is None and event.reason.startswith("automatic: canary autonomous success 0% (assisted 0%")
    assert event.details["canary"]["verdict"] == "worse"
    assert [row["task"] for row in event.details["canary"]["tasks"]] == ["pick-place-v3"]
    alert = Alert.objects.get(status=Alert.Status.ACTIVE)
    assert "v2 was rolled back automatically" in alert.message

    for user in (olivia, sam):
        client.force_login(user)
        page = client.get("/episodes/").content.decode()
        assert "v2 was rolled back automatically" in page
    client.force_login(olivia)
    assert client.post(f"/rollouts/alerts/{alert.pk}/acknowledge/").status_code == 403
    client.force_login(sam)
    client.post(f"/rollouts/alerts/{alert.pk}/acknowledge/", {"reason": "seen", "next": "/fleet/"})
    alert.refresh_from_db()
    assert alert.status == Alert.Status.ACKNOWLEDGED and alert.acknowledged_by == sam
    assert "rolled back automatically" not in client.get("/fleet/").content.decode()


def test_a_canary_that_is_not_worse_is_left_running(deployed, robots, tasks, settings):
    settings.GOVERNANCE_CANARY_MIN_EPISODES = 2
    v2 = in_canary(2, [robots[0]])
    for _ in range(2):
        make_episode(robots[0], v2, tasks[0])
        make_episode(robots[1], deployed, tasks[0])
    assert check.apply().get()["canaries"] == {2: "ready"}
    v2.refresh_from_db()
    assert v2.state == S.CANARY and not Alert.objects.exists()


# --- rules and modes ----------------------------------------------------------------------------------------------


def test_manual_mode_leaves_every_decision_to_people(deployed, settings):
    settings.ROLLOUT_MODE = "manual"
    v2 = make_version(2)
    version_published.send(sender=PolicyVersion, version=v2)
    assert rules.nominate_newest() is None
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT


def test_continuous_mode_sends_every_published_version_to_the_whole_fleet(deployed, settings):
    settings.ROLLOUT_MODE = "continuous"
    v2 = make_version(2, config={"run": 1, "step": 5000})
    version_published.send(sender=PolicyVersion, version=v2)
    assert v2.state == S.DEPLOYED
    assert set(Robot.objects.values_list("policy_version", flat=True)) == {v2.pk}


def test_the_nomination_rule_nominates_the_newest_checkpoint_every_k_minutes(deployed, settings):
    settings.ROLLOUT_MODE = "rules"
    settings.GOVERNANCE_NOMINATE_EVERY_MINUTES = 10
    make_version(2)
    v3 = make_version(3)
    assert rules.nominate_newest() == v3
    v3.refresh_from_db()
    assert v3.state == S.EVALUATING
    event = AuditEvent.objects.get(verb="version.nominate")
    assert event.actor is None and event.reason.startswith("rule:")
    v4 = make_version(4)
    decisions.reject(v3, None, reason="bad")
    assert rules.nominate_newest() is None  # within 10 minutes of the last nomination
    later = timezone.now() + timedelta(minutes=11)
    assert rules.nominate_newest(now=later) == v4
    assert rules.nominate_newest(now=later + timedelta(minutes=11)) is None  # v4 is still being evaluated


def test_the_auto_canary_rule_approves_a_candidate_within_the_margin(deployed, robots, tasks, settings):
    settings.ROLLOUT_MODE = "rules"
    settings.GOVERNANCE_AUTO_CANARY_MARGIN = 0.1
    settings.GOVERNANCE_CANARY_SHARE = 0.25
    settings.GOVERNANCE_EVALUATION_EPISODES = 2
    v2 = make_version(2)
    decisions.nominate(v2, None, reason="rule")
    for item in EvaluationItem.objects.select_related("version", "task"):
        evaluation.record(item, make_episode(robots[0], item.version, item.task, source="evaluation",
                                             seed=item.seed))
    evaluation.finish_complete()
    v2.refresh_from_db()
    assert v2.state == S.CANARY
    assert decisions.active_canary().robots.count() == 1
    assert AuditEvent.objects.get(verb="version.approve_canary").reason.startswith("rule:")


def test_the_auto_canary_rule_leaves_a_worse_candidate_to_a_supervisor(deployed, robots, settings):
    settings.ROLLOUT_MODE = "rules"
    settings.GOVERNANCE_AUTO_CANARY_MARGIN = 0.1
    settings.GOVERNANCE_EVALUATION_EPISODES = 2
    v2 = make_version(2)
    decisions.nominate(v2, None, reason="rule")
    for item in EvaluationItem.objects.select_related("version", "task"):
        evaluation.record(item, make_episode(robots[0], item.version, item.task, success=item.version == deployed,
                                             source="evaluation", seed=item.seed))
    evaluation.finish_complete()
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL


@pytest.mark.parametrize("mode, shown", [("manual", "manual"), ("rules", "nominated and evaluated every 10 min"),
                                         ("continuous", "straight to the whole fleet")])
def test_every_page_shows_the_rollout_mode(client, olivia, anna, settings, mode, shown):
    settings.ROLLOUT_MODE = mode
    settings.GOVERNANCE_NOMINATE_EVERY_MINUTES = 10
    for user, page in ((olivia, "/fleet/"), (olivia, "/learner/"), (anna, "/episodes/")):
        client.force_login(user)
        html = client.get(page).content.decode()
        assert 'id="rollout-mode"' in html and shown in html


# --- the decision POSTs -------------------------------------------------------------------------------------------


def prepare(decision: str, robots) -> tuple[PolicyVersion, str]:
    """A version a supervisor may take `decision` on, and the state that decision leads to."""
    if decision == "nominate":
        return make_version(2), S.EVALUATING
    if decision == "roll-back":
        return in_canary(2, [robots[0]]), S.ROLLED_BACK
    if decision == "redeploy":  # v1, superseded by v2
        decisions.promote(awaiting(2), None, reason="setup")
        return PolicyVersion.objects.get(number=1), S.DEPLOYED
    return awaiting(2), {"approve-canary": S.CANARY, "promote": S.DEPLOYED, "reject": S.REJECTED}[decision]


DECISION_URLS = ["nominate", "approve-canary", "promote", "reject", "roll-back", "redeploy"]


@pytest.mark.parametrize("decision", DECISION_URLS)
@pytest.mark.parametrize("persona", ["sam", "olivia", "anna", "oscar", "anonymous"])
def test_only_supervisors_may_decide(client, request, deployed, robots, persona, decision):
    version, leads_to = prepare(decision, robots)
    before_state, audit_before = version.state, AuditEvent.objects.count()
    robots_before = list(Robot.objects.order_by("pk").values_list("policy_version", flat=True))
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    data = {"reason": "permission matrix", "robots": ["sim-1"]} if decision == "approve-canary" else {
        "reason": "permission matrix"}
    response = client.post(f"/rollouts/v{version.number}/{decision}/", data)
    version.refresh_from_db()
    if persona == "sam":
        assert response.status_code == 302 and response["Location"] == f"/rollouts/v{version.number}/"
        assert version.state == leads_to
        verb = "version." + {"redeploy": "deploy"}.get(decision, decision.replace("-", "_"))
        event = AuditEvent.objects.get(object_id=str(version.pk), actor__username="sam", verb=verb)
        assert event.reason == "permission matrix"
        return
    if persona == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    else:
        assert response.status_code == 403
    assert version.state == before_state and AuditEvent.objects.count() == audit_before
    assert list(Robot.objects.order_by("pk").values_list("policy_version", flat=True)) == robots_before


@pytest.mark.parametrize("data, message", [
    ({}, "give a reason"),
    ({"reason": "   "}, "give a reason"),
    ({"reason": "x" * 2001}, "at most 2000"),
    ({"reason": "ok", "share": "150"}, "less than or equal to 100"),
    ({"reason": "ok", "share": "nan"}, "share"),
    ({"reason": "ok", "robots": ["no-such-robot"]}, "robots"),
    ({"reason": "ok", "robots": ["sim-1"], "share": "50"}, "not both"),
])
def test_bad_decision_input_gets_a_clear_error_and_changes_nothing(client, sam, deployed, robots, data, message):
    v2 = awaiting(2)
    client.force_login(sam)
    audit_before = AuditEvent.objects.count()
    response = client.post("/rollouts/v2/approve-canary/", data)
    assert response.status_code == 400 and message in response.content.decode()
    v2.refresh_from_db()
    assert v2.state == S.AWAITING_APPROVAL and AuditEvent.objects.count() == audit_before


def test_unknown_decisions_and_versions_are_refused(client, sam, deployed):
    client.force_login(sam)
    assert client.post("/rollouts/v1/delete/", {"reason": "x"}).status_code == 400
    assert client.post("/rollouts/v99/promote/", {"reason": "x"}).status_code == 404
    assert client.get("/rollouts/v1/promote/").status_code == 405


def test_a_refused_decision_is_explained_on_the_page(client, sam, deployed):
    v2 = make_version(2)
    client.force_login(sam)
    response = client.post("/rollouts/v2/promote/", {"reason": "skip the queue"}, follow=True)
    text = [str(m) for m in response.context["messages"]]
    assert text == ["Cannot promote v2: it is checkpoint now (it may just have been decided by someone else); "
                    "this needs awaiting approval or canary"]
    v2.refresh_from_db()
    assert v2.state == S.CHECKPOINT


@pytest.mark.django_db(transaction=True)
def test_two_supervisors_approving_at_once_make_one_transition_and_one_audit_row(tasks):
    robots = []
    for name in ("sim-1", "sim-2", "sim-3"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set(tasks)
        robots.append(robot)
    deploy_to_fleet(make_version(1), reason="base")
    v2 = awaiting(2)
    users = [make_user("sam", "supervisors"), make_user("sue", "supervisors")]
    clients = []
    for user in users:
        clients.append(Client())
        clients[-1].force_login(user)

    def approve(client, user, robot_name):
        response = client.post("/rollouts/v2/approve-canary/", {"reason": f"{user} says go", "robots": [robot_name]})
        return [str(m) for m in get_messages(response.wsgi_request)]

    results = at_the_same_instant(*(partial(approve, client, user, name)
                                    for client, user, name in zip(clients, users, ("sim-1", "sim-2"))))
    responses = {user.username: result for user, result in zip(users, results)}

    v2.refresh_from_db()
    assert v2.state == S.CANARY
    assert AuditEvent.objects.filter(verb="version.approve_canary").count() == 1
    assert Rollout.objects.filter(stage="canary").count() == 1
    canary_robots = list(Robot.objects.filter(policy_version=v2).values_list("name", flat=True))
    assert len(canary_robots) == 1
    outcomes = sorted(messages[0] for messages in responses.values())
    assert outcomes[0].startswith("Cannot approve canary v2: it is canary now")
    assert outcomes[1] == "v2 approved to a canary."


# --- pages ----------------------------------------------------------------------------------------------------------


def test_the_comparison_page_shows_figures_highlights_separated_intervals_and_the_lineage(
        client, sam, olivia, deployed, robots, tasks, settings):
    settings.GOVERNANCE_EVALUATION_EPISODES = 12
    run = TrainingRun.objects.create(algorithm="hg_dagger", config={}, base_version=deployed)
    for step in (50, 100, 150):
        TrainingMetric.objects.create(run=run, step=step, loss=1.0 / step, samples_per_second=1000.0,
                                      tasks={"pick-place-v3": {"w_on": 0.5}})
    v2 = make_version(2, parent=deployed, config={"run": run.pk, "step": 100}, samples_online=1234)
    decisions.nominate(v2, sam, reason="curves look good")
    for item in EvaluationItem.objects.select_related("version", "task"):
        # pick-place: candidate 12/12 vs deployed 0/12 (separated); shelf-place: both 6/12
        success = item.version == v2 if item.task == tasks[0] else item.seed % 2 == 0
        evaluation.record(item, make_episode(robots[0], item.version, item.task, success=success,
                                             source="evaluation", seed=item.seed, steps=40 + item.seed))
    evaluation.finish_complete()

    client.force_login(sam)
    response = client.get("/rollouts/v2/")
    html = response.content.decode()
    rows = {row["task"]: row for row in response.context["figures"]["tasks"]}
    assert rows["pick-place-v3"]["separation"] == "better" and rows["shelf-place-v3"]["separation"] == ""
    assert rows["pick-place-v3"]["candidate"]["mean_steps"] == 45.5
    assert '<tr class="better">' in html and "candidate better" in html
    assert "1.00 <span class=\"muted\">[0.76, 1.00] n=12" in html  # Wilson interval of 12/12
    assert 'href="/rollouts/v1/"' in html and "1234 online" in html
    assert [p["step"] for p in response.context["curves"]] == [50, 100]  # the run up to this version's step
    assert 'action="/rollouts/v2/approve-canary/"' in html

    client.force_login(olivia)  # operators see the figures, not the controls
    html = client.get("/rollouts/v2/").content.decode()
    assert "candidate better" in html and "approve-canary" not in html
    assert client.get("/rollouts/").status_code == 200


def test_the_audit_log_filters_and_exports_every_decision_with_its_figures(client, sam, deployed, robots):
    v2 = in_canary(2, [robots[0]])
    decisions.roll_back(v2, sam, reason="wobbly gripper")
    client.force_login(sam)
    response = client.get("/audit/", {"verb": "version.", "actor": "sam"})
    events = response.context["events"]
    assert [e.verb for e in events] == ["version.roll_back"]
    assert "wobbly gripper" in response.content.decode() and "canary v2" in response.content.decode()
    assert [e.verb for e in client.get("/audit/", {"actor": "system", "target": "v2"}).context["events"]] == [
        "version.approve_canary", "version.finish_evaluation", "version.start_evaluation", "version.nominate"]
    assert client.get("/audit/", {"since": "2999-01-01T00:00"}).context["events"] == []
    assert client.get("/audit/", {"since": "2030-01-01T00:00", "until": "2020-01-01T00:00"}).status_code == 400

    export = client.get("/audit/", {"object_type": "learner.policyversion", "format": "csv"})
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert {r["verb"] for r in rows} >= {"version.deploy", "version.approve_canary", "version.roll_back"}
    rollback = next(r for r in rows if r["verb"] == "version.roll_back")
    assert rollback["who"] == "sam" and rollback["reason"] == "wobbly gripper" and '"canary"' in rollback["details"]
    client.force_login(make_user("olga", "operators"))
    assert client.get("/audit/", {"format": "csv"}).status_code == 403


@pytest.mark.parametrize("name, value, message", [
    ("ROLLOUT_MODE", "auto", "expected manual, rules or continuous"),
    ("GOVERNANCE_EVALUATION_EPISODES", "0", "expected a value in [1, 1000]"),
    ("GOVERNANCE_CANARY_MARGIN", "1.5", "expected a value in [0.0, 1.0]"),
    ("GOVERNANCE_CANARY_MIN_EPISODES", "many", "expected an integer"),
    ("GOVERNANCE_CANARY_SHARE", "0", "expected a value in [0.01, 1.0]"),
    ("GOVERNANCE_AUTO_CANARY_MARGIN", "maybe", "expected a number in [0, 1], or off"),
    ("GOVERNANCE_NOMINATE_EVERY_MINUTES", "-1", "expected a value in [0.0, None]"),
])
def test_a_bad_governance_setting_stops_start_up_naming_the_variable(tmp_path, name, value, message):
    from tests.test_settings import run_setup

    result = run_setup(tmp_path, **{name: value})
    assert result.returncode != 0 and f"{name}=" in result.stderr and message in result.stderr, result.stderr


def test_the_auto_canary_rule_can_be_turned_off(tmp_path):
    from tests.test_settings import run_setup

    code = "import django; django.setup(); from django.conf import settings; " \
           "print(settings.GOVERNANCE_AUTO_CANARY_MARGIN, settings.ROLLOUT_MODE)"
    result = run_setup(tmp_path, code, GOVERNANCE_AUTO_CANARY_MARGIN="off", ROLLOUT_MODE="rules")
    assert result.stdout.split() == ["None", "rules"], result.stderr
