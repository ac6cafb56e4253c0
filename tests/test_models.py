"""State transitions: legal ones move the state and leave exactly one audit row; illegal ones raise and change nothing."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.audit import IllegalTransition
from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Robot, Task
from governance.decisions import deploy_to_fleet
from governance.models import Rollout
from learner.models import PolicyVersion
from review.models import EpisodeFlag
from tests.conftest import at_the_same_instant


@pytest.fixture
def robot(db):
    return Robot.objects.create(name="sim-01", status=Robot.Status.RUNNING, enabled=True,
                                last_heartbeat=timezone.now())


@pytest.fixture
def version(db):
    return PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="v1", checkpoint_sha256="0" * 64)


def audit_rows(obj, verb=None):
    rows = AuditEvent.objects.filter(object_type=obj._meta.label_lower, object_id=str(obj.pk))
    return rows.filter(verb=verb) if verb else rows


def test_it_pauses_and_resumes_a_robot_with_audit_rows(robot, olivia):
    control.pause(robot, olivia, reason="gripper sounds odd")
    robot.refresh_from_db()
    assert robot.status == Robot.Status.PAUSED
    event = audit_rows(robot, "robot.pause").get()
    assert event.actor == olivia
    assert event.reason == "gripper sounds odd"
    assert event.details == {"from": "running", "to": "paused"}

    control.resume(robot, olivia)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.STARTING  # never "offline": what it does is known at its next report
    assert audit_rows(robot).count() == 2


def test_it_refuses_to_resume_a_robot_that_is_not_paused(robot, olivia):
    with pytest.raises(IllegalTransition, match="it is running"):
        control.resume(robot, olivia)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING
    assert not audit_rows(robot).exists()


def test_it_refuses_to_pause_twice(robot, olivia):
    control.pause(robot, olivia)
    with pytest.raises(IllegalTransition):
        control.pause(robot, olivia)
    assert audit_rows(robot, "robot.pause").count() == 1


def test_heartbeat_never_overrides_a_pause(robot, olivia):
    control.pause(robot, olivia)
    assert control.heartbeat(robot, Robot.Status.RUNNING) is False
    robot.refresh_from_db()
    assert robot.status == Robot.Status.PAUSED


def test_heartbeat_brings_an_offline_robot_online_with_an_audit_row(db):
    robot = Robot.objects.create(name="sim-02")
    assert robot.status == Robot.Status.OFFLINE
    assert control.heartbeat(robot, Robot.Status.IDLE) is True
    robot.refresh_from_db()
    assert robot.status == Robot.Status.IDLE and robot.last_heartbeat is not None
    assert audit_rows(robot, "robot.online").count() == 1
    # Activity changes while online are telemetry, not decisions: no audit row each time.
    control.heartbeat(robot, Robot.Status.RUNNING)
    control.heartbeat(robot, Robot.Status.EXPERT)
    assert audit_rows(robot).count() == 1
    robot.refresh_from_db()
    assert robot.status == Robot.Status.EXPERT


def test_heartbeat_rejects_a_status_an_actor_may_not_report(robot):
    with pytest.raises(ValueError, match="may report"):
        control.heartbeat(robot, Robot.Status.PAUSED)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING


def test_a_takeover_holds_against_reports_until_its_episode_ends(robot, olivia):
    control.take_over(robot, olivia, reason="it is about to drop the box")
    robot.refresh_from_db()
    assert robot.status == Robot.Status.OPERATOR and robot.state == Robot.State.OPERATOR
    # The robot has not read the request yet: its report of the policy in control changes nothing but liveness.
    beat = robot.last_heartbeat
    assert control.heartbeat(robot, Robot.Status.RUNNING) is True
    robot.refresh_from_db()
    assert robot.status == Robot.Status.OPERATOR and robot.last_heartbeat > beat
    control.heartbeat(robot, Robot.Status.OPERATOR)  # it has
    control.end_takeover(robot)  # its episode ended
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING
    assert list(audit_rows(robot).values_list("verb", flat=True)) == ["robot.takeover"]  # its end is telemetry


def test_the_end_of_a_takeover_announces_the_state_as_it_is_now(robot, olivia, monkeypatch):
    control.take_over(robot, olivia)
    loaded = Robot.objects.get(pk=robot.pk)  # as the actor loaded it at its episode's start
    control.stop(robot, olivia, reason="end of shift")
    heard = []
    monkeypatch.setattr(control, "broadcast_on_commit", lambda event, data, **kw: heard.append(data))
    control.end_takeover(loaded)
    assert (heard[-1]["state"], heard[-1]["verb"]) == ("stopped", "robot.takeover_end")


def test_a_takeover_no_episode_took_up_lapses(robot, olivia):
    control.take_over(robot, olivia)
    Robot.objects.filter(pk=robot.pk).update(
        status_changed_at=timezone.now() - timedelta(seconds=Robot.TAKEOVER_SECONDS + 1))
    control.heartbeat(robot, Robot.Status.RUNNING)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING


def test_a_resumed_robot_is_starting_until_it_reports_and_may_be_taken_over_at_once(robot, olivia):
    control.pause(robot, olivia)
    control.resume(robot, olivia)
    robot.refresh_from_db()
    assert robot.state == Robot.State.STARTING and "takeover" in robot.allowed_commands()
    control.take_over(robot, olivia, reason="watch the next grasp")  # the episode about to start
    robot.refresh_from_db()
    assert robot.status == Robot.Status.OPERATOR


def test_a_started_robot_is_starting_then_whatever_it_reports(db, olivia):
    robot = Robot.objects.create(name="sim-05")
    control.start(robot, olivia)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.STARTING and robot.status_changed_at is not None
    assert audit_rows(robot, "robot.start").get().details == {"from": False, "to": True, "status": "starting"}
    control.heartbeat(robot, Robot.Status.RUNNING)
    robot.refresh_from_db()
    assert robot.state == Robot.State.POLICY
    assert not audit_rows(robot, "robot.online").exists()  # answering a start is not coming back from offline


def test_the_sweep_marks_a_start_that_never_answered_offline_only_after_the_timeout(db, olivia, settings):
    from fleet.tasks import sweep_robots

    robot = Robot.objects.create(name="sim-06", last_heartbeat=timezone.now() - timedelta(hours=1))
    control.start(robot, olivia)
    sweep_robots()  # its last heartbeat is an hour old, but it was started a moment ago
    robot.refresh_from_db()
    assert robot.status == Robot.Status.STARTING
    Robot.objects.filter(pk=robot.pk).update(
        status_changed_at=timezone.now() - timedelta(seconds=settings.FLEET_HEARTBEAT_TIMEOUT + 1))
    sweep_robots()
    robot.refresh_from_db()
    assert robot.status == Robot.Status.OFFLINE


@pytest.mark.parametrize("enabled, status, allowed", [
    (True, Robot.Status.RUNNING, ["stop", "pause", "takeover"]),
    (True, Robot.Status.EXPERT, ["stop", "pause", "takeover"]),
    (True, Robot.Status.OPERATOR, ["stop", "pause"]),
    (True, Robot.Status.STARTING, ["stop", "pause", "takeover"]),
    (True, Robot.Status.IDLE, ["stop", "pause"]),
    (True, Robot.Status.OFFLINE, ["stop", "pause"]),
    (True, Robot.Status.PAUSED, ["stop", "resume"]),
    (False, Robot.Status.RUNNING, ["start", "remove"]),  # stopped, finishing its last episode
    (False, Robot.Status.OFFLINE, ["start", "remove"]),
    (False, Robot.Status.PAUSED, ["start", "resume", "remove"]),
])
def test_each_state_allows_its_commands_and_refuses_the_others_with_a_reason(db, olivia, enabled, status,
                                                                             allowed):
    robot = Robot.objects.create(name="sim-07", enabled=enabled, status=status, last_heartbeat=timezone.now())
    assert robot.allowed_commands() == allowed
    for command in set(Robot.COMMANDS) - set(allowed):
        with pytest.raises(IllegalTransition) as refused:
            control.COMMANDS[command](Robot.objects.get(pk=robot.pk), olivia)
        assert str(refused.value) == robot.refusal(command) and "sim-07" in str(refused.value)
    robot.refresh_from_db()
    assert (robot.enabled, robot.status) == (enabled, status)
    assert not audit_rows(robot).exists()


def test_mark_offline_refuses_a_robot_that_heartbeat_meanwhile(robot):
    stale_cutoff = timezone.now() - timedelta(seconds=30)
    with pytest.raises(IllegalTransition, match="no longer holds"):
        control.mark_offline(robot, stale_cutoff)
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING
    assert not audit_rows(robot).exists()


def test_assigning_a_version_is_audited(robot, version, sam):
    control.assign_version(robot, version, sam, reason="canary")
    robot.refresh_from_db()
    assert robot.policy_version == version
    assert audit_rows(robot, "robot.assign_version").get().details == {"from": None, "to": version.pk}


def test_a_version_walks_its_lifecycle(version, sam):
    for verb, state in [
        ("nominate", "candidate"), ("start_evaluation", "evaluating"), ("finish_evaluation", "awaiting_approval"),
        ("approve_canary", "canary"), ("promote", "deployed"), ("supersede", "superseded"),
    ]:
        version.advance(verb, sam)
        version.refresh_from_db()
        assert version.state == state
    assert list(audit_rows(version).order_by("id").values_list("verb", flat=True)) == [
        "version.nominate", "version.start_evaluation", "version.finish_evaluation", "version.approve_canary",
        "version.promote", "version.supersede",
    ]


@pytest.mark.parametrize("verb", ["promote", "approve_canary", "supersede", "roll_back", "finish_evaluation"])
def test_a_checkpoint_cannot_skip_its_review(version, sam, verb):
    with pytest.raises(IllegalTransition, match="it is checkpoint"):
        version.advance(verb, sam)
    version.refresh_from_db()
    assert version.state == PolicyVersion.State.CHECKPOINT
    assert not audit_rows(version).exists()


def test_continuous_mode_deploys_a_checkpoint_directly(version):
    version.advance("deploy", reason="continuous mode")
    version.refresh_from_db()
    assert version.state == PolicyVersion.State.DEPLOYED
    assert audit_rows(version, "version.deploy").get().actor is None  # the system, not a person


def test_an_unknown_transition_is_a_clear_error(version, sam):
    with pytest.raises(ValueError, match="unknown policy version transition 'launch'"):
        version.advance("launch", sam)


def test_a_rollout_ends_once(version, sam):
    rollout = Rollout.objects.create(version=version, stage=Rollout.Stage.CANARY, requested_by=sam)
    rollout.end(Rollout.Status.ROLLED_BACK, sam, reason="worse than deployed")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.ROLLED_BACK and rollout.ended_at is not None
    with pytest.raises(IllegalTransition):
        rollout.end(Rollout.Status.PROMOTED, sam)
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.ROLLED_BACK
    assert audit_rows(rollout).count() == 1


def make_episode(**kwargs) -> Episode:
    task = Task.objects.get_or_create(env_name="pick-place-v3", defaults={"title": "Pick place"})[0]
    now = timezone.now()
    fields = dict(task=task, seed=1, outcome=Episode.Outcome.FAILURE, steps=500, total_return=1.0,
                  started_at=now - timedelta(seconds=6), finished_at=now)
    fields.update(kwargs)
    return Episode.objects.create(**fields)


def test_a_flag_needs_a_reason_and_resolves_once(olivia, anna):
    episode = make_episode()
    with pytest.raises(ValueError, match="needs a reason"):
        EpisodeFlag.raise_flag(episode, olivia, "   ")
    assert not EpisodeFlag.objects.exists()

    flag = EpisodeFlag.raise_flag(episode, olivia, "dropped the object at the shelf")
    assert audit_rows(episode, "episode.flag").get().actor == olivia
    flag.resolve(anna, EpisodeFlag.Status.DISMISSED, reason="not a failure")
    flag.refresh_from_db()
    assert flag.status == "dismissed" and flag.resolved_by == anna
    with pytest.raises(IllegalTransition):
        flag.resolve(anna, EpisodeFlag.Status.LABELLED)
    with pytest.raises(ValueError):
        flag.resolve(anna, "open")


def test_an_episode_cannot_claim_more_interventions_than_steps(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_episode(steps=10, intervention_steps=11)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_pauses_make_one_transition_and_one_audit_row(olivia):
    robot = Robot.objects.create(name="sim-race", status=Robot.Status.RUNNING, enabled=True)

    def pause():
        control.pause(Robot.objects.get(pk=robot.pk), olivia, reason="race")
        return "paused"

    outcomes = ["refused" if isinstance(result, IllegalTransition) else result
                for result in at_the_same_instant(pause, pause)]
    assert sorted(outcomes) == ["paused", "refused"]
    assert audit_rows(robot, "robot.pause").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_deployment_does_not_wait_for_an_episode_being_ingested(olivia):
    """Row locks of transitions are FOR NO KEY UPDATE, which foreign-key checks (FOR KEY SHARE) never block:
    otherwise ingestion and a deployment lock the same robot and version rows in opposite orders and deadlock."""
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    v1 = PolicyVersion.objects.create(number=1, algorithm="bc", checkpoint_path="a", checkpoint_sha256="0" * 64,
                                      state="deployed")
    v2 = PolicyVersion.objects.create(number=2, algorithm="bc", checkpoint_path="b", checkpoint_sha256="1" * 64)
    robot = Robot.objects.create(name="sim-lock", policy_version=v1)
    inserted, release, deployed = threading.Event(), threading.Event(), threading.Event()

    def ingest_slowly():
        try:
            with transaction.atomic():
                # Django's foreign keys are checked at COMMIT; checking now holds the locks while we wait.
                connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
                make_episode(robot=robot, policy_version=v1, task=task)  # FK checks lock robot and v1
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    def deploy():
        try:
            deploy_to_fleet(v2, olivia, reason="test")  # supersedes v1, assigns the robot
            deployed.set()
        finally:
            connection.close()

    ingesting = threading.Thread(target=ingest_slowly)
    ingesting.start()
    assert inserted.wait(10)
    deploying = threading.Thread(target=deploy)
    deploying.start()
    assert deployed.wait(5), "the deployment waited for the ingesting transaction"
    release.set()
    ingesting.join()
    deploying.join()
    robot.refresh_from_db()
    v1.refresh_from_db()
    assert robot.policy_version == v2 and v1.state == "superseded"
