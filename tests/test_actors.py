"""The fleet on the real stack: Celery actor workers run MuJoCo episodes into PostgreSQL."""
from __future__ import annotations

import json
import time

import pytest

from core import bus
from core.models import AuditEvent
from fleet import control
from fleet.ingest import load_arrays
from fleet.models import Episode, InterventionSegment, Robot
from fleet.sim import episode_data
from tests.conftest import publish_random_policy, wait_for
from tests.factories import TASK_NAMES

FAST = {"FLEET_REALTIME_FACTOR": 0}


def make_robot(name, task_rows, version):
    robot = Robot.objects.create(name=name, policy_version=version)
    robot.tasks.set(task_rows)
    return robot


def steps_taken(robot) -> bool:
    """The robot's running episode has reported progress past its first step (about a second in)."""
    raw = bus.client().hget(bus.PROGRESS_KEY, robot.pk)
    return raw is not None and json.loads(raw)["step"] > 0


def episodes_of(robot):
    return Episode.objects.filter(robot=robot).order_by("id")


def test_two_robots_run_real_episodes_stamped_with_their_version(start_worker, tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    alpha = make_robot("sim-alpha", [tasks[0]], version)
    beta = make_robot("sim-beta", [tasks[1]], version)
    start_worker(queues="actors", concurrency=2, **FAST)
    control.start(alpha, olivia)
    control.start(beta, olivia)

    wait_for(lambda: episodes_of(alpha).count() >= 2 and episodes_of(beta).count() >= 2, 120,
             "two episodes from each robot")
    control.stop(alpha, olivia)
    control.stop(beta, olivia)

    for robot, task in [(alpha, "pick-place-v3"), (beta, "shelf-place-v3")]:
        for episode in episodes_of(robot):
            assert episode.policy_version_id == version.pk and episode.task.env_name == task
            arrays = load_arrays(episode)
            assert episode_data.validate(arrays, 120) == episode.steps
            assert episode.meta["gate"]["no_progress_steps"] == 15  # gate parameters logged per episode
    # An untrained policy makes the scripted expert step in.
    assert Episode.objects.filter(intervention_steps__gt=0).exists()
    assert InterventionSegment.objects.filter(source="gate").exists()
    alpha.refresh_from_db()
    assert alpha.last_heartbeat is not None


def test_a_version_assigned_while_actors_run_is_used_from_the_next_episode(start_worker, tasks, olivia):
    v1 = publish_random_policy(1, TASK_NAMES, seed=1)
    v2 = publish_random_policy(2, TASK_NAMES, seed=2)
    robot = make_robot("sim-sync", tasks, v1)
    start_worker(queues="actors", **FAST)
    control.start(robot, olivia)
    wait_for(lambda: episodes_of(robot).count() >= 2, 60, "episodes on v1")

    control.assign_version(robot, v2, olivia, reason="new candidate")
    assigned_at = time.time()
    wait_for(lambda: episodes_of(robot).filter(policy_version=v2).count() >= 2, 60, "episodes on v2")
    control.stop(robot, olivia)

    # An episode reads its version when it is planned, before its scene is built and its clock starts: the one
    # being planned as the assignment committed may still run v1 (on a loaded machine it starts seconds later);
    # every episode after it runs v2.
    later = [e for e in episodes_of(robot) if e.started_at.timestamp() > assigned_at]
    assert later and sum(e.policy_version_id == v1.pk for e in later) <= 1
    # Once an episode ran v2, none ran v1 again: the swap happened at one episode boundary.
    first_v2 = episodes_of(robot).filter(policy_version=v2).first().pk
    assert not episodes_of(robot).filter(pk__gt=first_v2, policy_version=v1).exists()
    ready = [json.loads(v) for v in bus.client().hvals(bus.ready_key(robot.pk))]
    assert any(entry["version"] == v2.pk for entry in ready)


def test_an_operator_takeover_reaches_the_running_episode(start_worker, tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    robot = make_robot("sim-takeover", [tasks[0]], version)
    # A quarter of real time and no gate: the episode lasts ~6 s and only the operator can put the expert in control.
    start_worker(queues="actors", FLEET_REALTIME_FACTOR=0.25, FLEET_GATE='{"enabled": false}')
    control.start(robot, olivia)
    wait_for(lambda: steps_taken(robot), 60, "the episode to report its first steps")
    bus.request_takeover(robot.pk)
    wait_for(lambda: episodes_of(robot).exists(), 60, "the episode to finish")
    control.stop(robot, olivia)

    episode = episodes_of(robot).first()
    segments = list(episode.interventions.values_list("start_step", "end_step", "source"))
    assert len(segments) == 1 and segments[0][1:] == (episode.steps, "operator")
    assert 0 < segments[0][0] < episode.steps


def test_a_paused_robot_aborts_its_episode_and_runs_no_more(start_worker, tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    robot = make_robot("sim-pause", [tasks[0]], version)
    # A quarter of real time makes the episode last ~6 s, and the pause comes only once the actor reports steps
    # taken: an episode aborted before its first step stores nothing, so pausing earlier would race.
    start_worker(queues="actors", FLEET_REALTIME_FACTOR=0.25)
    control.start(robot, olivia)
    r = bus.client()
    wait_for(lambda: steps_taken(robot), 60, "the episode to report its first steps")
    control.pause(robot, olivia, reason="inspect")
    aborted = wait_for(lambda: episodes_of(robot).filter(outcome="aborted").first(), 30, "the aborted episode")
    assert all(e.outcome == "aborted" for e in episodes_of(robot))  # the running episode stopped, unfinished
    # Nothing runs (no lease) and nothing is queued (an episode task's marker lives from scheduling until the task
    # starts): the chain has stopped, so no episode can follow while the robot is paused.
    wait_for(lambda: r.exists(bus.lease_key(robot.pk), bus.scheduled_key(robot.pk)) == 0, 30,
             "the robot's chain of episodes to stop")
    assert not episodes_of(robot).filter(pk__gt=aborted.pk).exists()  # nothing new while paused


def test_a_takeover_shows_at_once_and_holds_until_its_episode_ends(start_worker, tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    robot = make_robot("sim-truth", [tasks[0]], version)
    # ~6 s episodes without the gate: only the operator puts the expert in control, mid-episode.
    start_worker(queues="actors", FLEET_REALTIME_FACTOR=0.25, FLEET_GATE='{"enabled": false}')
    control.start(robot, olivia)
    wait_for(lambda: steps_taken(robot), 60, "the episode to report its first steps")
    control.take_over(robot, olivia, reason="it is about to drop the box")
    assert Robot.objects.get(pk=robot.pk).state == Robot.State.OPERATOR  # from the commit, not the next report

    seen = []

    def stored():
        seen.append(Robot.objects.get(pk=robot.pk).status)  # read before looking for the episode
        return episodes_of(robot).exists()

    wait_for(stored, 60, "the episode taken over")
    assert set(seen[:-1]) == {Robot.Status.OPERATOR}  # the actor's reports never flipped it back meanwhile
    wait_for(lambda: Robot.objects.get(pk=robot.pk).status == Robot.Status.RUNNING, 10,
             "the policy to have the next episode")
    wait_for(lambda: episodes_of(robot).count() >= 2, 60, "the next episode")
    control.stop(robot, olivia)
    first, second = episodes_of(robot)[:2]
    assert first.interventions.get().source == "operator" and not second.interventions.exists()


def test_a_resumed_robot_runs_again_and_takes_a_takeover_at_once(start_worker, tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    robot = make_robot("sim-resume", [tasks[0]], version)
    start_worker(queues="actors", FLEET_REALTIME_FACTOR=0.25, FLEET_GATE='{"enabled": false}')
    control.start(robot, olivia)
    wait_for(lambda: steps_taken(robot), 60, "the episode to report its first steps")
    control.pause(robot, olivia, reason="inspect the gripper")
    wait_for(lambda: episodes_of(robot).filter(outcome="aborted").exists(), 30, "the aborted episode")
    control.resume(robot, olivia, reason="gripper fine")
    assert Robot.objects.get(pk=robot.pk).state == Robot.State.STARTING
    control.take_over(robot, olivia, reason="watch the next grasp")  # refused as "offline" before
    seen = []

    def finished():
        seen.append(Robot.objects.get(pk=robot.pk).status)
        return episodes_of(robot).exclude(outcome="aborted").first()

    done = wait_for(finished, 60, "the next episode")
    control.stop(robot, olivia)
    assert Robot.Status.OFFLINE not in seen and set(seen[:-1]) == {Robot.Status.OPERATOR}
    taken = done.interventions.get()  # the operator had it from the episode's first polls on
    assert taken.source == "operator" and taken.start_step <= 16 and taken.end_step == done.steps
    assert not AuditEvent.objects.filter(verb="robot.offline").exists()


def test_an_episode_aborted_by_a_pause_lifted_meanwhile_queues_the_next(tasks, olivia, monkeypatch,
                                                                        django_capture_on_commit_callbacks):
    """Resumed while its episode was still aborting: the resume's own episode found that episode's lease and gave
    up ("busy"), so the aborting one must queue the next, or the robot waits for the sweep."""
    from actors import runner

    robot = make_robot("sim-race", [tasks[0]], None)
    Robot.objects.filter(pk=robot.pk).update(enabled=True, status=Robot.Status.RUNNING)
    queued = []
    monkeypatch.setattr(control, "schedule_episode", lambda pk: queued.append(pk) or True)

    def episode(resumed):
        def run(robot, lease):
            with django_capture_on_commit_callbacks(execute=True):
                control.pause(robot, olivia)
                if resumed:
                    control.resume(robot, olivia)
            queued.clear()  # what the commands queued; the question is what the aborted episode does
            return "aborted"
        return run

    monkeypatch.setattr(runner, "_run_leased", episode(resumed=True))
    assert runner.run_robot_episode(robot.pk) == "aborted" and queued == [robot.pk]
    Robot.objects.filter(pk=robot.pk).update(status=Robot.Status.RUNNING)
    monkeypatch.setattr(runner, "_run_leased", episode(resumed=False))
    assert runner.run_robot_episode(robot.pk) == "aborted" and queued == []  # still paused: the chain stops
    bus.client().delete(bus.abort_key(robot.pk))


@pytest.mark.django_db(transaction=True)
def test_a_fresh_actor_process_holds_the_robots_lease_through_a_warm_up_longer_than_the_lease(
        tasks, settings, monkeypatch):
    # A fresh pool process's warm-up (torch, Meta-World, the first checkpoint and scene) took 25-90 s on a loaded
    # machine in bench/soak.py. A robot without a lease meanwhile was one the sweep handed to a second actor; a lease
    # not renewed meanwhile expired after FLEET_LEASE_SECONDS. So a thread keeps it through the warm-up.
    from actors import runner
    from fleet.tasks import _restart_orphaned_robots

    settings.FLEET_LEASE_SECONDS, settings.FLEET_REALTIME_FACTOR = 1.0, 0
    robot = make_robot("sim-fresh", [tasks[0]], publish_random_policy(1, TASK_NAMES))
    Robot.objects.filter(pk=robot.pk).update(enabled=True)
    seen = {}

    def slow_warm_up():
        time.sleep(2.5)  # the warm-up's stand-in: longer than the lease
        seen["leased"] = bus.client().exists(bus.lease_key(robot.pk))
        seen["restarted by the sweep"] = _restart_orphaned_robots()

    monkeypatch.setattr(runner, "_prepare_process", slow_warm_up)
    assert runner.run_robot_episode(robot.pk) in ("success", "timeout")
    assert seen == {"leased": 1, "restarted by the sweep": 0}
    assert episodes_of(robot).count() == 1
