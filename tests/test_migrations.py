"""Moving models to the apps that own them (audit events to core, flags and labels to review, rollouts to
governance) must carry a running database along: every row, every relation, every permission and who holds it."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

# The schema as it was before the move: fleet held all four models.
BEFORE = [("fleet", "0008_payload_storage_external"), ("review", "0001_review_claims_replays_failure_modes"),
          ("governance", "0001_evaluations_and_alerts"), ("learner", "0003_checkpoint_removed_at")]
# (app, codename) before -> after, for every permission whose model moved.
MOVED = {("fleet", "approve_rollout"): ("governance", "approve_rollout"),
         ("fleet", "view_rollout"): ("governance", "view_rollout"),
         ("fleet", "flag_episode"): ("review", "flag_episode"),
         ("fleet", "label_episode"): ("review", "label_episode"),
         ("fleet", "view_episodelabel"): ("review", "view_episodelabel"),
         ("fleet", "change_episodeflag"): ("review", "change_episodeflag"),
         ("fleet", "view_auditevent"): ("core", "view_auditevent")}


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def permissions_of(apps, holder) -> dict[tuple[str, str], int]:
    """A group's or a user's own permissions: (app, codename) -> permission id."""
    held = holder.permissions if hasattr(holder, "permissions") else holder.user_permissions
    return {(p.content_type.app_label, p.codename): p.pk for p in held.select_related("content_type")}


def fill(apps) -> dict:
    """Rows of every moved model, and of the models that refer to them, written with the old schema's models."""
    User, Group = apps.get_model("auth", "User"), apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    get = lambda name: apps.get_model("fleet", name)  # noqa: E731
    now = timezone.now()
    olivia = User.objects.create(username="olivia-old")
    role = Group.objects.create(name="old-role")
    role.permissions.set(Permission.objects.filter(content_type__app_label="fleet", codename__in=[
        codename for _, codename in MOVED]))
    olivia.user_permissions.set(Permission.objects.filter(codename="approve_rollout"))
    task = get("Task").objects.create(env_name="pick-place-v3", title="pick place")
    version = apps.get_model("learner", "PolicyVersion").objects.create(
        number=1, algorithm="bc", checkpoint_path="policies/x", checkpoint_sha256="0" * 64, state="deployed")
    robot = get("Robot").objects.create(name="sim-old", policy_version=version)
    episode = get("Episode").objects.create(
        uuid=uuid.uuid4(), task=task, robot=robot, policy_version=version, source="online", seed=3,
        outcome="failure", steps=120, total_return=1.5, started_at=now - timedelta(seconds=5), finished_at=now)
    flag = get("EpisodeFlag").objects.create(episode=episode, raised_by=olivia, reason="odd path")
    label = get("EpisodeLabel").objects.create(episode=episode, annotator=olivia, failure_mode="stalled",
                                               failure_step=40, disposition="relabel")
    rollout = get("Rollout").objects.create(version=version, stage="fleet", approved_by=olivia, reason="base")
    rollout.robots.set([robot])
    audit = [get("AuditEvent").objects.create(actor=olivia, verb=verb, object_type=kind, object_id=str(pk),
                                              object_repr=kind, details={"n": pk})
             for verb, kind, pk in [("robot.start", "fleet.robot", robot.pk), ("rollout.promoted", "fleet.rollout",
                                    rollout.pk), ("flag.dismissed", "fleet.episodeflag", flag.pk)]]
    return {"user": olivia.pk, "role": role.pk, "episode": episode.pk, "flag": flag.pk, "label": label.pk,
            "rollout": rollout.pk, "robot": robot.pk, "audit": [a.pk for a in audit],
            "role_permissions": permissions_of(apps, role), "user_permissions": permissions_of(apps, olivia),
            "content_types": {m: apps.get_model("contenttypes", "ContentType").objects.get(app_label="fleet",
                                                                                         model=m).pk
                              for m in ("auditevent", "episodeflag", "episodelabel", "rollout")}}


@pytest.mark.django_db(transaction=True)
def test_a_database_with_data_migrates_to_the_new_layout_with_every_row_and_permission():
    old_apps = migrate(BEFORE)
    try:
        before = fill(old_apps)
        apps = migrate(latest())
    finally:
        migrate(latest())  # whatever happened, later tests get today's schema

    Flag, Label = apps.get_model("review", "EpisodeFlag"), apps.get_model("review", "EpisodeLabel")
    Rollout, AuditEvent = apps.get_model("governance", "Rollout"), apps.get_model("core", "AuditEvent")
    flag, label = Flag.objects.get(pk=before["flag"]), Label.objects.get(pk=before["label"])
    assert (flag.episode_id, flag.raised_by_id, flag.reason, flag.status) == (before["episode"], before["user"],
                                                                             "odd path", "open")
    assert (label.episode_id, label.failure_mode, label.failure_step, label.disposition) == (
        before["episode"], "stalled", 40, "relabel")
    rollout = Rollout.objects.get(pk=before["rollout"])
    assert (rollout.stage, rollout.approved_by_id, list(rollout.robots.values_list("pk", flat=True))) == (
        "fleet", before["user"], [before["robot"]])
    events = {e.pk: e for e in AuditEvent.objects.filter(pk__in=before["audit"])}
    assert len(events) == 3
    assert [events[pk].object_type for pk in before["audit"]] == ["fleet.robot", "governance.rollout",
                                                                    "review.episodeflag"]
    # The relations read from the other side still work: the episode's flags and label, the robot's rollouts.
    episode = apps.get_model("fleet", "Episode").objects.get(pk=before["episode"])
    assert list(episode.flags.values_list("pk", flat=True)) == [before["flag"]] and episode.label.pk == label.pk

    # Each moved model's content type is the same row under its new app, so its permissions kept their ids,
    # and every group and user holds exactly what they held, under the new names.
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model, app in [("auditevent", "core"), ("episodeflag", "review"), ("episodelabel", "review"),
                       ("rollout", "governance")]:
        assert ContentType.objects.get(app_label=app, model=model).pk == before["content_types"][model]
        assert not ContentType.objects.filter(app_label="fleet", model=model).exists()
    renamed = lambda held: {MOVED.get(key, key): pk for key, pk in held.items()}  # noqa: E731
    role = apps.get_model("auth", "Group").objects.get(pk=before["role"])
    user = apps.get_model("auth", "User").objects.get(pk=before["user"])
    assert len(before["role_permissions"]) == len(MOVED)
    assert permissions_of(apps, role) == renamed(before["role_permissions"])
    assert permissions_of(apps, user) == renamed(before["user_permissions"]) == {
        ("governance", "approve_rollout"): before["user_permissions"][("fleet", "approve_rollout")]}


@pytest.mark.django_db(transaction=True)
def test_the_roll_ups_are_rebuilt_with_autonomous_and_assisted_success_and_past_restarts_marked():
    """Roll-ups written by the old trigger (one "successes" column) are rebuilt with the two kinds apart; learner
    metrics whose step went back (a restart before restarts were recorded) get their mark."""
    old = migrate([("fleet", "0013_robot_operator_and_starting"), ("learner", "0003_checkpoint_removed_at")])
    try:
        now = timezone.now()
        task = old.get_model("fleet", "Task").objects.create(env_name="pick-place-v3", title="pick place")
        Episode = old.get_model("fleet", "Episode")
        for outcome, helped in (("success", False), ("success", True), ("success", True), ("timeout", False)):
            Episode.objects.create(uuid=uuid.uuid4(), task=task, source="online", seed=1, outcome=outcome, steps=50,
                                   total_return=0, intervention_steps=10 if helped else 0,
                                   intervention_count=1 if helped else 0, started_at=now - timedelta(seconds=5),
                                   finished_at=now)
        assert old.get_model("fleet", "EpisodeRollup").objects.get(size="m").successes == 3
        version = old.get_model("learner", "PolicyVersion").objects.create(
            number=1, algorithm="bc", checkpoint_path="policies/x", checkpoint_sha256="0" * 64)
        run = old.get_model("learner", "TrainingRun").objects.create(algorithm="hg_dagger", base_version=version)
        Metric = old.get_model("learner", "TrainingMetric")
        for k, step in enumerate([50, 100, 150, 200, 100, 150, 200, 250]):  # lost 100-200, resumed below 100
            Metric.objects.create(run=run, step=step, loss=1.0, samples_per_second=1.0,
                                  created_at=now + timedelta(seconds=k))
        apps = migrate(latest())
    finally:
        migrate(latest())

    minute = apps.get_model("fleet", "EpisodeRollup").objects.get(size="m")
    assert (minute.episodes, minute.autonomous_successes, minute.assisted_successes) == (4, 1, 2)
    marked = apps.get_model("learner", "TrainingMetric").objects.exclude(resumed_from=None)
    assert list(marked.values_list("step", "resumed_from")) == [(100, 99)]
