"""A robot's page: its state, the history of its status and who moved it, the versions it ran, its episodes and its
interventions; for whoever may watch the fleet."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet import control
from fleet.models import Episode, InterventionSegment, Robot
from tests.conftest import publish_random_policy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def robot(tasks, olivia):
    robot = control.add("sim-page", tasks[:1], olivia, reason="new arm on bench 3")
    control.start(robot, olivia, reason="shift begins")
    control.heartbeat(robot, Robot.Status.RUNNING)
    control.take_over(robot, olivia, reason="it hesitated at the shelf")
    return robot


def episodes_for(robot, task, version, count, start):
    made = []
    for i in range(count):
        finished = start + timedelta(seconds=10 * i)
        episode = Episode.objects.create(
            robot=robot, task=task, policy_version=version, seed=i, steps=100, total_return=1.0,
            outcome="success" if i % 2 else "failure", intervention_steps=20 if i % 5 == 0 else 0,
            intervention_count=1 if i % 5 == 0 else 0, started_at=finished - timedelta(seconds=5), finished_at=finished)
        if i % 5 == 0:
            InterventionSegment.objects.create(episode=episode, start_step=80, end_step=100, source="operator")
        made.append(episode)
    return made


@pytest.mark.parametrize("persona, status", [("olivia", 200), ("sam", 200), ("anna", 403), ("oscar", 403)])
def test_whoever_may_watch_the_fleet_may_open_a_robots_page(client, request, robot, persona, status):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("robot-detail", args=[robot.pk])).status_code == status


def test_the_page_shows_the_state_history_and_who_did_what_and_why(client, olivia, sam, robot):
    client.force_login(sam)  # a supervisor sees it all, without the buttons
    response = client.get(reverse("robot-detail", args=[robot.pk]))
    html = response.content.decode()
    assert 'class="status state-operator" data-field="status">operator in control<' in html
    history = [(event.verb, event.change, event.who, event.reason) for event in response.context["status_history"]]
    assert history == [("robot.takeover", "running → operator in control", "olivia", "it hesitated at the shelf"),
                       ("robot.start", "started, starting", "olivia", "shift begins"),
                       ("robot.add", "", "olivia", "new arm on bench 3")]
    actions = [(event.verb, event.who) for event in response.context["operator_actions"]]
    assert ("robot.assign_version", "olivia") not in actions and ("robot.takeover", "olivia") in actions
    assert "it hesitated at the shelf" in html and "Last heartbeat" in html
    assert 'data-command="' not in html  # controls only for operators
    client.force_login(olivia)
    html = client.get(reverse("robot-detail", args=[robot.pk])).content.decode()
    assert f'formaction="{reverse("robot-command", args=[robot.pk, "pause"])}"' in html


def test_the_page_shows_versions_run_interventions_and_pages_through_episodes(client, olivia, robot, tasks):
    v1, v2 = publish_random_policy(1, ["pick-place-v3"]), publish_random_policy(2, ["pick-place-v3"], seed=2)
    start = timezone.now() - timedelta(hours=1)
    older = episodes_for(robot, tasks[0], v1, 20, start)
    newer = episodes_for(robot, tasks[0], v2, 10, start + timedelta(minutes=30))
    client.force_login(olivia)
    page = reverse("robot-detail", args=[robot.pk])
    first = client.get(page)
    versions = [(v["number"], v["episodes"], v["successes"], v["helped"]) for v in first.context["versions"]]
    assert versions == [(2, 10, 5, 2), (1, 20, 10, 4)]  # newest first
    assert [e.pk for e in first.context["interventions"]][:2] == [newer[5].pk, newer[0].pk]
    assert "operator takeover 80–100" in first.content.decode()
    newest_first = [e.pk for e in reversed(older + newer)]
    assert [e.pk for e in first.context["episodes"]] == newest_first[:25]
    second = client.get(page, {"after": first.context["next_after"]})
    assert [e.pk for e in second.context["episodes"]] == newest_first[25:]
    assert second.context["next_after"] is None
    assert client.get(page, {"after": "yesterday"}).status_code == 400


def test_a_remote_robots_page_links_to_its_credentials_and_a_simulated_one_does_not(client, olivia, robot, tasks):
    remote = control.add("arm-remote", tasks[:1], olivia, kind=Robot.Kind.REMOTE)
    client.force_login(olivia)
    credentials = reverse("robot-credentials", args=[remote.pk])
    assert credentials in client.get(reverse("robot-detail", args=[remote.pk])).content.decode()
    assert "credentials" not in client.get(reverse("robot-detail", args=[robot.pk])).content.decode()
    assert reverse("robot-detail", args=[remote.pk]) in client.get(credentials).content.decode()


def test_a_tile_links_to_its_robots_page(client, olivia, robot):
    client.force_login(olivia)
    assert f'href="{reverse("robot-detail", args=[robot.pk])}"' in client.get(reverse("fleet")).content.decode()
