"""The audit trail cannot be rewritten: the database refuses UPDATE and DELETE of its rows, users who acted are
kept (deactivated, never deleted) and named on their rows as they were, the admin cannot edit audited state
around the models' transitions, every superseded rollout leaves its row, and the CSV export is safe to open in a
spreadsheet."""
from __future__ import annotations

import csv
import io

import pytest
from django.db import connection, transaction
from django.db.models import ProtectedError
from django.db.utils import DatabaseError
from django.urls import reverse

from core.models import AuditEvent
from fleet.models import Robot
from governance.decisions import approve_canary, deploy_to_fleet
from governance.models import Rollout
from review.models import EpisodeFlag, ReviewClaim
from tests.reviewing import ingest, synthetic
from tests.test_governance import awaiting, make_version


@pytest.fixture
def event(olivia):
    robot = Robot.objects.create(name="sim-1")
    return AuditEvent.record(olivia, "robot.pause", robot, reason="check the gripper")


def test_the_database_refuses_to_change_or_delete_an_audit_row(event):
    for attempt in (lambda: AuditEvent.objects.filter(pk=event.pk).update(reason="nothing happened"),
                    lambda: AuditEvent.objects.filter(pk=event.pk).delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM fleet_auditevent")  # nor by SQL, past the ORM
    event.refresh_from_db()
    assert event.reason == "check the gripper" and AuditEvent.objects.count() == 1


def test_users_who_acted_are_never_deleted_and_keep_their_name_on_the_row(event, olivia, admin_client):
    with pytest.raises(ProtectedError), transaction.atomic():
        olivia.delete()
    olivia.username = "olivia-renamed"
    olivia.save()
    event.refresh_from_db()
    assert (event.actor_name, str(event)) == ("olivia", "olivia robot.pause sim-1")
    assert AuditEvent.record(None, "robot.stop", Robot.objects.get()).who == "system"
    # The admin offers deactivation ("Active"), not deletion.
    assert admin_client.get(reverse("admin:auth_user_delete", args=[olivia.pk])).status_code == 403
    assert admin_client.post(reverse("admin:auth_user_changelist"),
                             {"action": "delete_selected", "_selected_action": [olivia.pk]}).status_code == 200
    assert type(olivia).objects.filter(pk=olivia.pk).exists()


def test_the_admin_shows_audited_state_and_cannot_change_it(admin_client, tasks, olivia, anna):
    episode = ingest(tasks[0], synthetic())
    flag = EpisodeFlag.raise_flag(episode, olivia, "odd")
    ReviewClaim.claim(episode, anna)
    label = ReviewClaim.submit_label(episode, anna, failure_mode="other", failure_step=None, notes="",
                                     disposition="keep")
    ReviewClaim.claim(episode, anna)
    robot = Robot.objects.create(name="sim-9")
    version = make_version(1)
    deploy_to_fleet(version, reason="base")
    rollout = Rollout.objects.get()
    rows = {"review_episodelabel": label, "review_episodeflag": flag, "review_reviewclaim": ReviewClaim.objects.get(),
            "fleet_robot": robot, "governance_rollout": rollout, "learner_policyversion": version,
            "core_auditevent": AuditEvent.objects.first()}
    before = AuditEvent.objects.count()
    for name, row in rows.items():
        change = reverse(f"admin:{name}_change", args=[row.pk])
        assert admin_client.get(change).status_code == 200, name  # shown
        assert admin_client.post(change, {"enabled": "on", "disposition": "exclude", "status": "dismissed"}) \
            .status_code == 403, name
        assert admin_client.get(reverse(f"admin:{name}_delete", args=[row.pk])).status_code == 403, name
        assert admin_client.get(reverse(f"admin:{name}_add")).status_code == 403, name
    label.refresh_from_db(), flag.refresh_from_db(), robot.refresh_from_db()
    assert (label.disposition, flag.status, robot.enabled) == ("keep", "labelled", False)
    assert AuditEvent.objects.count() == before


def test_deploying_ends_every_other_rollout_with_an_audit_row(tasks, sam):
    robots = [Robot.objects.create(name=f"sim-{i}") for i in range(3)]
    for robot in robots:
        robot.tasks.set(tasks)
    deploy_to_fleet(make_version(1), reason="base")
    canary = approve_canary(awaiting(2), sam, robots=robots[:1])
    deploy_to_fleet(make_version(3), sam, reason="continuous")
    ended = Rollout.objects.exclude(version__number=3)
    assert {rollout.status for rollout in ended} == {Rollout.Status.SUPERSEDED}
    for rollout in ended:
        row = AuditEvent.objects.get(verb="rollout.superseded", object_id=str(rollout.pk))
        assert row.actor == sam and "v3" in row.reason
    assert canary is not None and ended.count() == 2  # the base's fleet rollout and v2's canary


def test_the_csv_export_cannot_carry_a_formula(client, sam, event, olivia):
    robot = Robot.objects.get()
    for reason in ("=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "plain words"):
        AuditEvent.record(olivia, "robot.pause", robot, reason=reason)
    client.force_login(sam)
    export = client.get("/audit/", {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    reasons = {row["reason"] for row in rows}
    assert {"'=HYPERLINK(\"http://evil\",\"x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "plain words"} <= reasons
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values() if cell)
