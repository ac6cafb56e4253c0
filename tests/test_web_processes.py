"""Several web processes behind a proxy: each holds its own subscription to the live channel, so one committed
change reaches the dashboards of every process (README "Running it on several hosts", deploy/nginx.conf)."""
from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone

import websockets.sync.client

from fleet.ingest import ingest_episode
from fleet.models import Robot
from tests.conftest import session_cookie, wait_for
from tests.factories import make_arrays
from tests.test_governance import make_version


def test_one_episode_reaches_dashboards_on_two_web_processes(start_web, tasks, olivia):
    robot, version = Robot.objects.create(name="sim-two-webs"), make_version(1)
    webs = [start_web(), start_web()]
    cookie = session_cookie(olivia)
    heard: dict[str, list] = {web.address: [] for web in webs}
    opened = threading.Barrier(len(webs) + 1)
    stop = threading.Event()

    def listen(address: str) -> None:
        with websockets.sync.client.connect(f"ws://{address}/ws/fleet/", open_timeout=10, additional_headers={
                "Cookie": cookie, "Origin": f"http://{address}"}) as socket:
            opened.wait(30)
            while not stop.is_set():
                try:
                    heard[address].append(json.loads(socket.recv(timeout=0.5)))
                except TimeoutError:
                    continue

    threads = [threading.Thread(target=listen, args=(web.address,), daemon=True) for web in webs]
    for thread in threads:
        thread.start()
    opened.wait(30)  # both sockets are accepted: each process's subscription stands
    key = uuid.uuid4()
    now = datetime.now(timezone.utc)
    episode, _ = ingest_episode(uuid=key, task=tasks[0].env_name, seed=1, outcome="timeout", arrays=make_arrays(),
                                started_at=now, finished_at=now, robot_id=robot.pk, policy_version_id=version.pk)

    def delivered(address: str) -> bool:
        return any(item["event"] == "episode.finished" and item["data"]["episode"] == episode.pk
                   for message in heard[address] for item in message.get("events", []))

    try:
        wait_for(lambda: all(delivered(web.address) for web in webs), 30, "the episode on both processes' sockets")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
