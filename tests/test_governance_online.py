"""A version's online record against the version it replaced: what a supervisor judges continuous mode by, on
every version page whatever the mode. Autonomous success (success with no intervention of any kind), Wilson 95 %
intervals, episodes, interventions per episode and steps to success, computed in SQL over online episodes."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditEvent
from fleet.models import Episode, Robot
from governance import analysis, decisions
from governance.analysis import online_comparison, replaced_version
from governance.decisions import deploy_to_fleet
from learner.models import PolicyVersion, TrainingMetric, TrainingRun
from learner.signals import version_published
from tests.test_governance import awaiting, make_version


@pytest.fixture
def robot(tasks):
    row = Robot.objects.create(name="sim-1")
    row.tasks.set(tasks)
    Robot.objects.create(name="sim-2").tasks.set(tasks)
    return row


def run(robot, version, task, n, *, autonomous=0, helped=0, steps=40, at=None, source=Episode.Source.ONLINE):
    """n online episodes: `autonomous` succeed alone in `steps` steps, `helped` succeed after a takeover, the rest
    time out."""
    started = at or timezone.now()
    for i in range(n):
        success = i < autonomous + helped
        help_steps = 10 if autonomous <= i < autonomous + helped else 0
        Episode.objects.create(
            robot=robot, policy_version=version, task=task, source=source, seed=i,
            outcome=Episode.Outcome.SUCCESS if success else Episode.Outcome.TIMEOUT,
            steps=steps if success else 120, total_return=1.0, intervention_steps=help_steps,
            intervention_count=1 if help_steps else 0, started_at=started + timedelta(seconds=i),
            finished_at=started + timedelta(seconds=i + 1))


@pytest.fixture
def continuous(robot, tasks, settings):
    """Continuous mode: the learner published v1 and then v2, each deployed to the fleet as it came."""
    settings.ROLLOUT_MODE = "continuous"
    v1 = make_version(1)
    deploy_to_fleet(v1, reason="base policy")
    pick, shelf = tasks
    run(robot, v1, pick, 20, autonomous=5, helped=10)
    run(robot, v1, pick, 3, autonomous=3, source=Episode.Source.EVALUATION)  # not online: not counted
    v2 = make_version(2, parent=v1, config={"run": 1, "step": 40})
    version_published.send(sender=PolicyVersion, version=v2)
    v2.refresh_from_db()
    assert v2.state == PolicyVersion.State.DEPLOYED
    run(robot, v2, pick, 20, autonomous=18, steps=35)
    run(robot, v2, shelf, 4, autonomous=4, at=timezone.now() + timedelta(minutes=1))  # only v2 ran it: not pooled
    return v1, v2


def test_a_version_is_compared_with_the_one_it_replaced_on_autonomous_success(continuous):
    v1, v2 = continuous
    online = online_comparison(v2)
    assert (online["version"], online["replaced"]) == (2, 1)
    (row,) = online["tasks"]
    assert row["task"] == "pick-place-v3" and row["separation"] == "better"
    assert row["version"] == {"successes": 18, "episodes": 20, "rate": 0.9, "low": 0.699, "high": 0.9721,
                              "assisted_successes": 0, "assisted_rate": 0.0,
                              "interventions_per_episode": 0.0, "mean_steps": 35.0}
    # Ten of v1's successes had an expert take over: they are assisted, not autonomous, and each counts one
    # intervention.
    assert row["replaced"] == {"successes": 5, "episodes": 20, "rate": 0.25, "low": 0.1119, "high": 0.4687,
                               "assisted_successes": 10, "assisted_rate": 0.5,
                               "interventions_per_episode": 0.5, "mean_steps": 40.0}
    assert online["overall"]["version"]["episodes"] == 20 and online["separation"] == "better"
    assert online["only_version"] == ["shelf-place-v3"] and online["only_replaced"] == []
    assert online["span"]["version"]["episodes"] == 24 and online["span"]["replaced"]["episodes"] == 20


def test_the_version_page_shows_the_online_comparison_in_continuous_mode(client, olivia, continuous):
    client.force_login(olivia)
    html = client.get("/rollouts/v2/").content.decode()
    assert 'id="online-comparison"' in html and "v2 better" in html
    assert '0.90 <span class="muted">[0.70, 0.97] n=20</span>' in html
    assert '0.25 <span class="muted">[0.11, 0.47] n=20</span>' in html
    assert "shelf-place-v3 ran only on v2" in html and 'href="/rollouts/v1/"' in html
    assert "Continuous mode deploys each version without an evaluation." in html

    html = client.get("/rollouts/v1/").content.decode()
    assert "v1 is the first version the fleet ran: there is nothing to compare it with." in html
    assert '0.25 <span class="muted">[0.11, 0.47] n=20</span>' in html


def test_the_replaced_version_follows_deployment_order_not_lineage(robot, tasks, sam):
    v1 = make_version(1)
    deploy_to_fleet(v1, reason="base")
    v2 = make_version(2, parent=v1)
    deploy_to_fleet(v2, reason="continuous")
    decisions.roll_back(v2, sam, reason="drops boxes")  # the fleet runs v1 again
    v3 = make_version(3, parent=v2)  # trained on from v2, deployed after v1
    deploy_to_fleet(v3, reason="continuous")
    v4 = awaiting(4)
    decisions.approve_canary(v4, sam, reason="try", robots=[robot])
    checkpoint = make_version(5)
    assert [replaced_version(v) for v in (v1, v2, v3, v4, checkpoint)] == [None, v1, v1, v3, v3]


def test_each_side_reads_only_its_versions_newest_online_episodes(continuous, monkeypatch):
    v1, v2 = continuous
    monkeypatch.setattr(analysis, "ONLINE_EPISODES", 4)
    online = online_comparison(v2, v1)
    # v2's newest 4 are its shelf-place episodes: no task in common with v1's newest 4 (pick-place timeouts).
    assert online["tasks"] == [] and online["span"]["version"]["newest_only"] is True
    assert online["only_version"] == ["shelf-place-v3"] and online["only_replaced"] == ["pick-place-v3"]


def test_a_roll_back_keeps_the_online_figures_it_was_decided_on(client, sam, continuous):
    v1, v2 = continuous
    decisions.roll_back(v2, sam, reason="worse on shelves")
    event = AuditEvent.objects.get(verb="version.roll_back")
    assert event.details["online"]["overall"]["version"]["successes"] == 18
    assert event.details["online"]["replaced"] == 1
    client.force_login(sam)
    html = client.get("/rollouts/v2/").content.decode()
    assert "online autonomous success, v2" in html


def test_the_training_curves_carry_a_title_per_chart(client, olivia, continuous):
    v1, v2 = continuous
    training = TrainingRun.objects.create(algorithm="hg_dagger", config={}, base_version=v1)
    TrainingMetric.objects.create(run=training, step=40, loss=0.5, samples_per_second=1000.0,
                                  tasks={"pick-place-v3": {"w_on": 0.5}})
    PolicyVersion.objects.filter(pk=v2.pk).update(config={"run": training.pk, "step": 40})
    client.force_login(olivia)
    html = client.get("/rollouts/v2/").content.decode()
    assert 'data-title="Training loss up to v2"' in html and 'data-title="Online share ω_on per task up to v2"' in html
