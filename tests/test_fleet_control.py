"""Fleet control: operator POST views and the `fleet` command, permission-checked and audited."""
from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from core import bus
from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Robot, Task
from governance.decisions import deploy_to_fleet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def task(db):
    return Task.objects.create(env_name="pick-place-v3", title="Pick place")


@pytest.fixture
def robot(task):
    robot = Robot.objects.create(name="sim-01", status=Robot.Status.RUNNING, enabled=True,
                                 last_heartbeat=timezone.now())
    robot.tasks.set([task])
    return robot


def endpoints(robot):
    return [
        (reverse("robot-command", args=[robot.pk, command]), {}) for command in
        ("start", "stop", "pause", "resume", "takeover", "remove")
    ] + [
        (reverse("fleet-command", args=["start"]), {}),
        (reverse("fleet-command", args=["stop"]), {}),
        (reverse("robot-add"), {"name": "sim-new", "tasks": ["pick-place-v3"]}),
        (reverse("robot-tasks", args=[robot.pk]), {"tasks": ["pick-place-v3"]}),
    ]


@pytest.mark.parametrize("persona", ["sam", "anna", "oscar"])
def test_only_operators_may_use_any_control(client, request, robot, persona):
    client.force_login(request.getfixturevalue(persona))
    for url, data in endpoints(robot):
        assert client.post(url, data).status_code == 403, url
    robot.refresh_from_db()
    assert (robot.status, robot.enabled) == (Robot.Status.RUNNING, True)
    assert Robot.objects.count() == 1 and not AuditEvent.objects.exists()


def test_anonymous_controls_are_sent_to_log_in(client, robot):
    for url, data in endpoints(robot):
        response = client.post(url, data)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    assert not AuditEvent.objects.exists()


def test_an_operator_starts_and_stops_a_robot(client, olivia, robot, django_capture_on_commit_callbacks):
    Robot.objects.filter(pk=robot.pk).update(enabled=False)
    client.force_login(olivia)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(reverse("robot-command", args=[robot.pk, "start"]))
    robot.refresh_from_db()
    assert robot.enabled and callbacks  # the first episode is queued after commit
    client.post(reverse("robot-command", args=[robot.pk, "stop"]))
    robot.refresh_from_db()
    assert not robot.enabled
    assert list(AuditEvent.objects.order_by("id").values_list("verb", flat=True)) == ["robot.start", "robot.stop"]


def test_starting_twice_is_refused_with_a_message(client, olivia, robot):
    Robot.objects.filter(pk=robot.pk).update(enabled=False)
    client.force_login(olivia)
    client.post(reverse("robot-command", args=[robot.pk, "start"]))
    response = client.post(reverse("robot-command", args=[robot.pk, "start"]), follow=True)
    assert "already started" in response.content.decode()
    assert AuditEvent.objects.filter(verb="robot.start").count() == 1


def test_a_takeover_reaches_redis_and_is_audited(client, olivia, robot, django_capture_on_commit_callbacks):
    bus.client().delete(bus.takeover_key(robot.pk))
    client.force_login(olivia)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("robot-command", args=[robot.pk, "takeover"]), {"reason": "about to drop it"})
    assert bus.client().get(bus.takeover_key(robot.pk)) == b"1"
    assert AuditEvent.objects.get(verb="robot.takeover").reason == "about to drop it"


def test_an_idle_robot_cannot_be_taken_over(client, olivia, robot):
    Robot.objects.filter(pk=robot.pk).update(status=Robot.Status.IDLE)
    bus.client().delete(bus.takeover_key(robot.pk))
    client.force_login(olivia)
    response = client.post(reverse("robot-command", args=[robot.pk, "takeover"]), follow=True)
    assert "it is idle, not running" in response.content.decode()
    assert not bus.client().exists(bus.takeover_key(robot.pk))


def test_unknown_commands_are_refused(client, olivia, robot):
    client.force_login(olivia)
    assert client.post(reverse("robot-command", args=[robot.pk, "self-destruct"])).status_code == 400
    assert client.post(reverse("fleet-command", args=["reboot"])).status_code == 400


def test_add_then_remove_robots(client, olivia, task, robot):
    client.force_login(olivia)
    client.post(reverse("robot-add"), {"name": "sim-02", "tasks": ["pick-place-v3"]})
    added = Robot.objects.get(name="sim-02")
    assert list(added.tasks.all()) == [task] and not added.enabled
    client.post(reverse("robot-command", args=[added.pk, "remove"]))
    assert not Robot.objects.filter(name="sim-02").exists()  # never ran: deleted
    now = timezone.now()
    Episode.objects.create(robot=robot, task=task, seed=1, outcome="timeout", steps=1, total_return=0,
                           started_at=now, finished_at=now)
    Robot.objects.filter(pk=robot.pk).update(enabled=False)  # only a stopped robot is removed
    client.post(reverse("robot-command", args=[robot.pk, "remove"]))
    robot.refresh_from_db()
    assert robot.retired  # ran episodes: retired, history kept
    assert robot.pk not in [r["id"] for r in client.get(reverse("fleet")).context["snapshot"]["robots"]]
    assert set(AuditEvent.objects.values_list("verb", flat=True)) == {"robot.add", "robot.remove"}


def test_a_new_robot_runs_the_fleets_version_and_joins_its_rollout(task, robot):
    from governance.models import Rollout
    from tests.conftest import publish_random_policy

    assert control.add("sim-early", [task]).policy_version is None  # nothing deployed yet: nothing to run
    version = publish_random_policy(1, ["pick-place-v3"])
    deploy_to_fleet(version, reason="first deployment")
    added = control.add("sim-late", [task])
    added.refresh_from_db()
    assert added.policy_version == version
    assert added in Rollout.objects.get(status=Rollout.Status.ACTIVE, version=version).robots.all()
    assert AuditEvent.objects.filter(verb="robot.assign_version", object_id=str(added.pk)).exists()


@pytest.mark.parametrize("data", [{"name": "", "tasks": ["pick-place-v3"]}, {"name": "bad name!", "tasks": []},
                                  {"name": "sim-01", "tasks": ["pick-place-v3"]},
                                  {"name": "sim-09", "tasks": ["no-such-v3"]}])
def test_bad_robot_additions_change_nothing(client, olivia, robot, data):
    client.force_login(olivia)
    response = client.post(reverse("robot-add"), data, follow=True)
    assert response.status_code == 200
    assert Robot.objects.count() == 1 and not AuditEvent.objects.exists()


def test_the_fleet_command_manages_robots(task, olivia):
    out = io.StringIO()
    call_command("fleet", "add", "sim-a", "sim-b", "--tasks", "pick-place-v3", stdout=out)
    call_command("fleet", "start", "sim-a", "sim-b", stdout=out)
    call_command("fleet", "--as", "olivia", "pause", "--all", "--reason", "maintenance", stdout=out)
    call_command("fleet", "list", stdout=out)
    assert "sim-a" in out.getvalue() and "paused" in out.getvalue()
    assert AuditEvent.objects.filter(verb="robot.pause", actor=olivia, reason="maintenance").count() == 2
    with pytest.raises(CommandError, match="unknown robot"):
        call_command("fleet", "start", "sim-zzz")
    with pytest.raises(CommandError, match="unknown task"):
        call_command("fleet", "set-tasks", "sim-a", "no-such-v3")
    with pytest.raises(CommandError, match="already exists"):
        call_command("fleet", "add", "sim-a")


def test_generate_demos_stores_successful_expert_episodes_once(task):
    call_command("generate_demos", "--per-task", "2", "--tasks", "pick-place-v3", stdout=io.StringIO())
    demos = Episode.objects.filter(source=Episode.Source.OFFLINE_DEMO)
    assert demos.count() == 2
    assert all(d.outcome == "success" and d.robot is None and d.seed >= 1_000_000 for d in demos)
    call_command("generate_demos", "--per-task", "2", "--tasks", "pick-place-v3", stdout=io.StringIO())
    assert demos.count() == 2  # cached: nothing regenerated
    with pytest.raises(CommandError):
        call_command("generate_demos", "--tasks", "make-coffee-v3")


# --- what a tile shows and offers, and every command's reason ------------------------------------------------

def post_json(client, robot, command, **data):
    return client.post(reverse("robot-command", args=[robot.pk, command]), data, HTTP_ACCEPT="application/json")


def test_a_command_answers_with_the_new_state_and_dashboards_hear_it(client, olivia, robot, monkeypatch):
    heard = []
    monkeypatch.setattr(control, "broadcast_on_commit", lambda event, data, **kw: heard.append((event, data)))
    client.force_login(olivia)
    response = post_json(client, robot, "takeover", reason="it is about to drop the box")
    assert response.status_code == 200
    state = response.json()["robot"]
    assert (state["state"], state["label"]) == ("operator", "operator in control")
    assert state["commands"] == ["stop", "pause"]  # no second takeover
    assert heard == [("robot.status", {**state, "verb": "robot.takeover"})]
    assert AuditEvent.objects.get(verb="robot.takeover").reason == "it is about to drop the box"


def test_a_refused_command_says_why_and_answers_with_the_state_as_it_is(client, olivia, robot):
    Robot.objects.filter(pk=robot.pk).update(enabled=False)  # stopped meanwhile, by someone else
    client.force_login(olivia)
    response = post_json(client, robot, "takeover")
    assert response.status_code == 409
    assert response.json()["error"] == "Cannot take over robot sim-01: it is stopped; start it first"
    assert response.json()["robot"]["state"] == "stopped"
    assert response.json()["robot"]["commands"] == ["start", "remove"]
    assert not AuditEvent.objects.exists()


def test_a_plain_form_post_returns_to_the_page_it_came_from(client, olivia, robot):
    client.force_login(olivia)
    page = reverse("robot-detail", args=[robot.pk])
    response = client.post(reverse("robot-command", args=[robot.pk, "pause"]), {"next": page})
    assert response["Location"] == page
    response = client.post(reverse("robot-command", args=[robot.pk, "resume"]), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("fleet")  # never off the site


def test_the_fleet_page_renders_only_the_buttons_each_state_allows(client, olivia, robot, task):
    stopped = Robot.objects.create(name="sim-02")
    client.force_login(olivia)
    html = client.get(reverse("fleet")).content.decode()
    tiles = {r.pk: html.split(f'data-robot="{r.pk}"')[1].split("</article>")[0] for r in (robot, stopped)}

    def offered(tile):
        return [part.split('"')[0] for part in tile.split('data-command="')[1:]
                if " hidden>" not in part.split(">")[0] + ">"]

    assert offered(tiles[robot.pk]) == ["stop", "pause", "takeover"]
    assert offered(tiles[stopped.pk]) == ["start", "remove"]
    assert 'class="status state-policy" data-field="status">policy in control<' in tiles[robot.pk]
    assert 'class="status state-stopped" data-field="status">stopped<' in tiles[stopped.pk]
    assert 'name="reason"' in tiles[robot.pk]


def test_every_operator_action_on_the_page_keeps_its_reason(client, olivia, robot, task):
    client.force_login(olivia)
    client.post(reverse("robot-add"), {"name": "sim-02", "tasks": ["pick-place-v3"], "reason": "spare arm"})
    client.post(reverse("robot-tasks", args=[robot.pk]), {"tasks": ["pick-place-v3"], "reason": "one task only"})
    client.post(reverse("fleet-command", args=["start"]), {"reason": "shift begins"})
    client.post(reverse("fleet-command", args=["stop"]), {})
    reasons = dict(AuditEvent.objects.values_list("verb", "reason").order_by("id"))
    assert reasons["robot.add"] == "spare arm" and reasons["robot.set_tasks"] == "one task only"
    assert reasons["robot.start"] == "shift begins"
    assert reasons["robot.stop"] == "whole fleet"  # said nothing: the scope is the reason


def test_the_fleet_command_takes_over_and_every_action_keeps_its_reason(task, olivia):
    out, err = io.StringIO(), io.StringIO()
    call_command("fleet", "--as", "olivia", "add", "sim-c", "--tasks", "pick-place-v3", "--reason", "new arm",
                 stdout=out)
    call_command("fleet", "--as", "olivia", "start", "sim-c", "--reason", "calibrated", stdout=out)
    robot = Robot.objects.get(name="sim-c")
    control.heartbeat(robot, Robot.Status.RUNNING)
    call_command("fleet", "--as", "olivia", "takeover", "sim-c", "--reason", "watch this grasp", stdout=out)
    assert "takeover: sim-c (operator in control)" in out.getvalue()
    with pytest.raises(CommandError, match="1 of 1 robot"):  # refused: an operator has it already
        call_command("fleet", "--as", "olivia", "takeover", "sim-c", stdout=out, stderr=err)
    assert "an operator is in control of it already" in err.getvalue()
    call_command("fleet", "--as", "olivia", "stop", "sim-c", "--reason", "end of shift", stdout=out)
    call_command("fleet", "--as", "olivia", "remove", "sim-c", "--reason", "sent for repair", stdout=out)
    rows = list(AuditEvent.objects.filter(actor=olivia).order_by("id").values_list("verb", "reason"))
    assert rows == [("robot.add", "new arm"), ("robot.start", "calibrated"), ("robot.takeover", "watch this grasp"),
                    ("robot.stop", "end of shift"), ("robot.remove", "sent for repair")]


def test_a_restart_of_the_demo_keeps_robots_an_operator_stopped_stopped(task, olivia):
    from fleet.management.commands.prepare_demo import start_robots

    robots = [control.add(name, [task]) for name in ("sim-01x", "sim-02x", "sim-03x")]
    assert start_robots().startswith("3 robots started; first start: sim-01x, sim-02x, sim-03x")
    control.stop(robots[1], olivia, reason="gripper worn")
    control.stop(robots[2], None, reason="stopped from the shell")  # `fleet stop` without --as: still a decision
    for _ in range(2):  # a restart, and another
        line = start_robots()
        assert line == "1 robots started; left stopped, as someone left them: sim-02x, sim-03x"
    assert [r.enabled for r in Robot.objects.filter(pk__in=[r.pk for r in robots]).order_by("name")] == [
        True, False, False]
    assert AuditEvent.objects.filter(verb="robot.start").count() == 3  # each started once, at the first start-up
