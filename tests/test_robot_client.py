"""The reference robot client as a separate process against the real stack: its episodes are stored, reach the
dashboards live and the learner, its version swaps between episodes, and nothing is lost or doubled when sopweb's
web server goes away and comes back."""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys

import pytest
from django.core.management import call_command

from fleet import control
from fleet.models import Episode, Robot, Task
from gateway import credentials
from learner.models import PolicyVersion
from tests.conftest import ROOT, process_env, session_cookie, wait_for

LEARNER_ENV = {"LEARNER_PUBLISH_EVERY": 40, "ROLLOUT_MODE": "continuous", "LEARNER_SLICE_SECONDS": 20,
               "LEARNER_BATCH_SIZE": 64}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def remote(transactional_db, settings, olivia):
    """A deployed base policy (v1) and a remote robot on it, with its token."""
    settings.LEARNER_PUBLISH_EVERY = LEARNER_ENV["LEARNER_PUBLISH_EVERY"]
    settings.LEARNER_BATCH_SIZE = LEARNER_ENV["LEARNER_BATCH_SIZE"]
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=100)
    call_command("generate_demos", "--per-task", "2", stdout=io.StringIO())
    call_command("pretrain_base", "--demos-per-task", "2", "--steps", "20", "--deploy", stdout=io.StringIO())
    robot = control.add("arm-remote", [task], olivia, kind=Robot.Kind.REMOTE)
    _, token = credentials.issue(robot, olivia)
    return robot, token


class ClientProcess:
    def __init__(self, address: str, token: str, tmp_path, **options):
        self.log = tmp_path / "robot-client.log"
        args = [sys.executable, str(ROOT / "bin" / "sopweb-robot"), "run", "--url", f"http://{address}",
                "--realtime-factor", str(options.get("realtime_factor", 0)), "--state-dir", str(tmp_path / "robot")]
        # Not the test's settings: the client knows sopweb only by its URL. The token travels in the environment.
        env = {k: v for k, v in process_env().items() if not k.startswith(("DJANGO", "DATABASE", "REDIS"))}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=tmp_path, env=dict(env, SOPWEB_ROBOT_TOKEN=token), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.outbox = tmp_path / "robot" / "outbox"

    def recorded(self) -> set[str]:
        return set(re.findall(r"episode ([0-9a-f-]{36}) recorded", self.log.read_text()))

    def pending(self) -> list[str]:
        return [p.stem for p in self.outbox.glob("*.json")] if self.outbox.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def robot_client(tmp_path):
    clients = []

    def start(address, token, **options):
        client = ClientProcess(address, token, tmp_path, **options)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.stop()


def test_a_robot_client_process_feeds_the_dashboard_and_the_learner_and_swaps_versions_between_episodes(
        remote, start_web, start_worker, robot_client, olivia):
    from websockets.sync.client import connect

    robot, token = remote
    server = start_web(**LEARNER_ENV)
    start_worker("learner", queues="learner,default,control", **LEARNER_ENV)
    dashboard = connect(f"ws://{server.address}/ws/fleet/", additional_headers={
        "Cookie": session_cookie(olivia), "Origin": f"http://{server.address}"})
    client = robot_client(server.address, token)
    control.start(robot, olivia)

    def heard_an_episode_of_the_remote_robot():
        batch = json.loads(dashboard.recv(timeout=60))["events"]
        return any(e["event"] == "episode.finished" and e["data"]["robot"] == robot.pk for e in batch)

    wait_for(heard_an_episode_of_the_remote_robot, 90, "the dashboard to hear of the remote robot's episode")
    dashboard.close()
    call_command("learner", "start", "--as", "olivia", stdout=io.StringIO())
    wait_for(lambda: PolicyVersion.objects.filter(number__gte=2, state="deployed").exists(), 180,
             "the learner to publish a version and (continuous mode) deploy it")
    v2 = PolicyVersion.objects.get(number=2)
    assert v2.samples_online > 0 and Episode.objects.filter(robot=robot, pk__lte=v2.last_episode_id).exists()
    wait_for(lambda: Episode.objects.filter(robot=robot, policy_version__number__gte=2).exists(), 120,
             "an episode of the remote robot on the new version")
    control.stop(robot, olivia)
    call_command("learner", "stop", stdout=io.StringIO())
    client.stop()

    episodes = list(Episode.objects.filter(robot=robot).order_by("id").values_list("policy_version__number",
                                                                                    flat=True))
    first_new = next(i for i, number in enumerate(episodes) if number >= 2)
    assert all(number == 1 for number in episodes[:first_new]) and 1 not in episodes[first_new:]
    stored = set(str(u) for u in Episode.objects.filter(robot=robot).values_list("uuid", flat=True))
    assert not (client.outbox / "rejected").exists(), list((client.outbox / "rejected").glob("*.reason"))
    assert stored == client.recorded() - set(client.pending())  # every recorded episode arrived, none twice
    assert all(e.meta["via"] == "api" and e.source == "online" for e in Episode.objects.filter(robot=robot))


def test_episodes_buffered_while_the_web_server_is_down_arrive_exactly_once(remote, start_web, robot_client,
                                                                             olivia):
    robot, token = remote
    server = start_web()
    control.start(robot, olivia)
    client = robot_client(server.address, token)
    wait_for(lambda: Episode.objects.filter(robot=robot).count() >= 2, 90, "the first uploads")
    server.stop()
    wait_for(lambda: len(client.pending()) >= 3, 90, "episodes kept on the robot's disk while sopweb is away")
    buffered = set(client.pending())
    server.start()
    uploaded = lambda: set(str(u) for u in Episode.objects.filter(robot=robot).values_list("uuid", flat=True))  # noqa
    wait_for(lambda: buffered <= uploaded(), 90, "the buffered episodes to arrive")
    control.stop(robot, olivia)
    wait_for(lambda: not client.pending(), 60, "the outbox to drain")
    client.stop()
    stored = [str(u) for u in Episode.objects.filter(robot=robot).values_list("uuid", flat=True)]
    assert len(stored) == len(set(stored)) and set(stored) == client.recorded()
    assert client.proc.returncode == 0, client.log.read_text()[-2000:]


def test_the_client_obeys_take_over_pause_and_resume(remote, start_web, robot_client, olivia):
    from core import bus

    robot, token = remote
    server = start_web()
    control.start(robot, olivia)
    # A quarter of real time: 100-step episodes last 5 s, so a command reaches the episode it is meant for.
    client = robot_client(server.address, token, realtime_factor=0.25)

    def progress_step():
        raw = bus.client().hget(bus.PROGRESS_KEY, robot.pk)
        return json.loads(raw)["step"] if raw else 0

    wait_for(lambda: progress_step() > 0, 60, "the client's first episode to report progress")
    before = Episode.objects.filter(robot=robot).count()
    control.take_over(robot, olivia)
    wait_for(lambda: Episode.objects.filter(robot=robot).count() > before, 60, "the episode taken over")
    taken = Episode.objects.filter(robot=robot).order_by("id").last()
    assert taken.interventions.filter(source="operator").exists()  # the rest of it ran on the expert

    wait_for(lambda: progress_step() > 0, 60, "the next episode")
    control.pause(robot, olivia)
    wait_for(lambda: Episode.objects.filter(robot=robot, outcome="aborted").exists(), 30, "the aborted episode")
    paused_count = Episode.objects.filter(robot=robot).count()
    heard = lambda: Robot.objects.get(pk=robot.pk).last_heartbeat  # noqa: E731
    for _ in range(2):  # two more heartbeats while paused: the client idles, alive, and runs nothing
        seen = heard()
        wait_for(lambda: heard() > seen, 30, "the paused client's idle heartbeats")
    assert Episode.objects.filter(robot=robot).count() == paused_count  # nothing runs while paused
    control.resume(robot, olivia)
    wait_for(lambda: Episode.objects.filter(robot=robot).count() > paused_count, 60, "episodes after resuming")
    client.stop()
    assert not (client.outbox / "rejected").exists()


def test_the_client_gives_back_evaluation_items_it_will_not_run(remote, web_server, tmp_path, sam, olivia):
    """The client's side of evaluation work, its classes in this process against the real web server: it asks for
    an item only with an empty outbox (an item whose episode waits there would be handed to it again), and gives
    back at once an item whose upload the server refused and one of a task it leaves to other robots."""
    import uuid
    from datetime import timedelta

    from django.utils import timezone

    from fleet.sim import episode_data
    from governance import decisions
    from governance.models import EvaluationItem
    from robot_client.api import Api
    from robot_client.robot import Robot as Client
    from tests.conftest import publish_random_policy
    from tests.factories import make_arrays

    robot, token = remote
    shelf = Task.objects.create(env_name="shelf-place-v3", title="Shelf place", max_steps=100)
    robot.tasks.add(shelf)
    control.start(robot, olivia)
    decisions.nominate(publish_random_policy(2, ["pick-place-v3", "shelf-place-v3"], seed=2), sam)
    api = Api(f"http://{web_server}", token)
    api.whoami()

    def held() -> list[int]:
        return list(EvaluationItem.objects.filter(robot=robot, episode=None).values_list("pk", flat=True))

    client = Client(api, tmp_path / "robot", realtime_factor=0, use_socket=False)
    client.refresh()
    now = timezone.now()
    params = {"task": "pick-place-v3", "seed": 1, "outcome": "timeout", "version": 1,
              "started_at": (now - timedelta(seconds=5)).isoformat(), "finished_at": now.isoformat()}
    client.outbox.put(str(uuid.uuid4()), params, b"kept while sopweb was away")
    assert client._next_plan()[-1] is None and held() == []  # online work: nothing claimed
    for kept in client.outbox.directory.glob("*.*"):
        kept.unlink()
    item = client._next_plan()[-1]
    assert item is not None and held() == [item]
    # Its upload is refused (a seed that is not the item's): set aside, and the item goes back.
    claimed = EvaluationItem.objects.get(pk=item)
    client.outbox.put(str(uuid.uuid4()), {**params, "task": claimed.task.env_name, "seed": claimed.seed + 1,
                                          "version": claimed.version.number, "source": "evaluation", "item": item},
                      episode_data.encode(make_arrays(60)))
    assert client.outbox.drain(api) == 0 and len(list(client.outbox.rejected.glob("*.reason"))) == 1
    assert held() == []
    # A client that runs only the other task gives the item it is handed back at once, and runs online.
    oldest = EvaluationItem.objects.filter(episode=None).order_by("pk").first()
    other = "shelf-place-v3" if oldest.task.env_name == "pick-place-v3" else "pick-place-v3"
    narrow = Client(api, tmp_path / "narrow", tasks=[other], realtime_factor=0, use_socket=False)
    narrow.refresh()
    plan = narrow._next_plan()
    assert plan[-1] is None and plan[2]["name"] == other and held() == []
    assert EvaluationItem.objects.get(pk=oldest.pk).claimed_at is None
