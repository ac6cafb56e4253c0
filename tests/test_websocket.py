"""The fleet socket: only authenticated users with the right permission join; broadcasts reach them."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from core.events import broadcast
from fleet.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, FleetConsumer
from tests.conftest import ROOT, process_env, session_cookie, wait_for


async def communicate(user):
    communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    return communicator, connected, code


@pytest.mark.django_db(transaction=True)
async def test_anonymous_users_are_rejected():
    communicator, connected, code = await communicate(AnonymousUser())
    assert not connected and code == CLOSE_UNAUTHENTICATED
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_users_without_the_permission_are_rejected(anna):
    communicator, connected, code = await communicate(anna)
    assert not connected and code == CLOSE_FORBIDDEN
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_an_operator_joins_and_receives_broadcasts(olivia):
    communicator, connected, _ = await communicate(olivia)
    assert connected
    try:
        await sync_to_async(broadcast)("robot.status", {"robot": 7, "status": "paused"})
        assert await communicator.receive_json_from(timeout=5) == {
            "events": [{"event": "robot.status", "data": {"robot": 7, "status": "paused"}}],
        }
    finally:
        await communicator.disconnect()


BROADCAST_FROM_ANOTHER_PROCESS = """
import django; django.setup()
from core.events import broadcast
broadcast("robot.status", {"robot": 3, "status": "expert", "from": "another process"})
"""


def test_the_real_asgi_stack_accepts_a_logged_in_operator_and_delivers_another_process_broadcast(
        web_server, olivia):
    cookie = session_cookie(olivia)

    async def scenario():
        async with websockets.connect(f"ws://{web_server}/ws/fleet/", open_timeout=10,
                                      additional_headers={"Cookie": cookie,
                                                          "Origin": f"http://{web_server}"}) as ws:
            # The process has subscribed once the handshake completed; now another process speaks.
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", BROADCAST_FROM_ANOTHER_PROCESS],
                                    cwd=ROOT, env=process_env(), check=True, timeout=60)
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

    message = asyncio.run(scenario())
    assert message == {"events": [
        {"event": "robot.status", "data": {"robot": 3, "status": "expert", "from": "another process"}}]}


@pytest.mark.parametrize("who", ["anonymous", "annotator", "forged", "foreign origin"])
def test_the_real_asgi_stack_refuses_sockets_it_should_not_serve(web_server, anna, olivia, who):
    headers = {"Origin": f"http://{web_server}"}
    if who == "annotator":
        headers["Cookie"] = session_cookie(anna)
    elif who == "forged":
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}=forged-session-key"
    elif who == "foreign origin":
        headers = {"Cookie": session_cookie(olivia), "Origin": "http://evil.example.com"}

    async def scenario():
        async with websockets.connect(f"ws://{web_server}/ws/fleet/", open_timeout=10,
                                      additional_headers=headers) as ws:
            await ws.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(scenario())
    assert refused.value.response.status_code == 403


@pytest.mark.django_db(transaction=True)
async def test_an_ingested_episode_is_announced_after_commit(olivia):
    import uuid as uuid_lib
    from datetime import timedelta

    from django.utils import timezone

    from fleet.ingest import ingest_episode
    from fleet.models import Task
    from tests.factories import make_arrays

    communicator, connected, _ = await communicate(olivia)
    assert connected
    try:
        task = await Task.objects.acreate(env_name="pick-place-v3", title="Pick place")
        now = timezone.now()
        episode, _ = await sync_to_async(ingest_episode)(
            uuid=uuid_lib.uuid4(), task=task.env_name, seed=1, outcome="timeout", arrays=make_arrays(),
            started_at=now - timedelta(seconds=1), finished_at=now)
        [message] = (await communicator.receive_json_from(timeout=5))["events"]
        assert message["event"] == "episode.finished"
        assert message["data"]["episode"] == episode.pk and message["data"]["intervention_steps"] == 20
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_events_is_coalesced_into_few_messages(olivia, settings):
    """200 events in a second or two: the browser gets at most DASHBOARD_PUSH_RATE messages a second (after the
    bucket's first second's worth), and every event, in order."""
    settings.DASHBOARD_PUSH_RATE = 4
    communicator, connected, _ = await communicate(olivia)
    assert connected
    try:
        loop = asyncio.get_running_loop()
        messages, arrivals = [], []

        def finished(message):  # robots' progress may arrive too (a robot of an earlier test, still fresh)
            return [e for e in message["events"] if e["event"] == "episode.finished"]

        async def receive():
            while sum(len(finished(m)) for m in messages) < 200:
                messages.append(await communicator.receive_json_from(timeout=5))
                arrivals.append(loop.time())

        receiver = asyncio.create_task(receive())
        began = loop.time()
        for i in range(200):
            await sync_to_async(broadcast)("episode.finished", {"episode": i})
            await asyncio.sleep(0.005)
        await receiver
        received = [e["data"]["episode"] for m in messages for e in finished(m)]
        assert received == list(range(200))  # none lost, none reordered
        # a bucket of 4 tokens refilled at 4/s: at most 4 + 4 t messages in t seconds
        assert len(messages) <= 4 + 1 + (arrivals[-1] - began) * 4 * 1.1, (len(messages), arrivals)
        assert len(messages) < 20  # 200 events, far fewer messages
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_changes_go_out_at_once_and_progress_is_read_once_a_second(olivia, settings):
    import time

    import redis

    from core import bus

    settings.DASHBOARD_PUSH_RATE = 4
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.delete(bus.PROGRESS_KEY)

    def progress(**entries):  # robot id -> step, written at once (as one actor's hset is)
        with r.pipeline(transaction=True) as pipe:
            for robot, (step, age) in entries.items():
                pipe.hset(bus.PROGRESS_KEY, robot[1:], json.dumps(
                    {"robot": int(robot[1:]), "step": step, "control": "policy", "at": time.time() - age}))
            pipe.execute()

    communicator, connected, _ = await communicate(olivia)
    assert connected
    try:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await sync_to_async(broadcast)("robot.status", {"robot": 1, "status": "running"})
        assert len((await communicator.receive_json_from(timeout=5))["events"]) == 1
        assert loop.time() - sent < 0.2  # a change while tokens last: no coalescing delay
        progress(r1=(9, 0), r2=(109, 0))
        batch = (await communicator.receive_json_from(timeout=3))["events"]
        assert [(e["event"], e["data"]["robot"], e["data"]["step"]) for e in batch] == [
            ("robot.progress", 1, 9), ("robot.progress", 2, 109)]
        assert await communicator.receive_nothing(timeout=1.5)  # nothing changed: nothing sent
        progress(r1=(10, 60))  # a dead actor's last word: stale, never shown
        assert await communicator.receive_nothing(timeout=1.5)
        await sync_to_async(broadcast)("episode.finished", {"episode": 5})  # a change: out at once
        assert (await communicator.receive_json_from(timeout=0.5))["events"] == [
            {"event": "episode.finished", "data": {"episode": 5}}]
        progress(r2=(110, 0))
        batch = (await communicator.receive_json_from(timeout=3))["events"]
        assert [(e["data"]["robot"], e["data"]["step"]) for e in batch] == [(2, 110)]
    finally:
        await communicator.disconnect()
        r.delete(bus.PROGRESS_KEY)


def test_an_idle_socket_stays_open(web_server, olivia):
    """Nothing to say for a while (longer than any Redis read timeout): the socket and its subscription stay."""
    cookie = session_cookie(olivia)

    async def scenario():
        async with websockets.connect(f"ws://{web_server}/ws/fleet/", open_timeout=10,
                                      additional_headers={"Cookie": cookie,
                                                          "Origin": f"http://{web_server}"}) as ws:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), timeout=12)  # idle, and still open afterwards
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", BROADCAST_FROM_ANOTHER_PROCESS],
                                    cwd=ROOT, env=process_env(), check=True, timeout=60)
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

    assert asyncio.run(scenario())["events"][0]["data"]["from"] == "another process"


def test_a_hundred_and_twenty_dashboards_connect_at_once(web_server, olivia):
    """A burst of sockets (dashboards reconnecting after a restart) joins at once: all are accepted and hear the
    next event, and the process holds one subscription for all of them."""
    cookie = session_cookie(olivia)
    headers = {"Cookie": cookie, "Origin": f"http://{web_server}"}

    async def scenario():
        async def one():
            async with websockets.connect(f"ws://{web_server}/ws/fleet/", open_timeout=30,
                                          additional_headers=headers) as ws:
                await barrier.wait()
                return json.loads(await asyncio.wait_for(ws.recv(), timeout=20))

        barrier = asyncio.Barrier(121)
        clients = [asyncio.create_task(one()) for _ in range(120)]
        await asyncio.wait_for(barrier.wait(), timeout=60)  # all 120 accepted
        await asyncio.sleep(1.5)  # the progress hash has been read at least once
        subscriptions.append(hub_subscriptions())
        connections.append(hub_connections())
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", BROADCAST_FROM_ANOTHER_PROCESS],
                                cwd=ROOT, env=process_env(), check=True, timeout=60)
        return await asyncio.gather(*clients)

    subscriptions, connections = [], []
    received = asyncio.run(scenario())
    assert len(received) == 120 and all(m["events"][0]["data"]["from"] == "another process" for m in received)
    assert subscriptions == [1]
    assert connections == [2]  # the subscription and the progress reader, for all 120 sockets
    wait_for(lambda: hub_subscriptions() == 0, 10, "the last socket's leaving to end the subscription")


def hub_subscriptions() -> int:
    """Connections subscribed to the live channel (one per web process with sockets)."""
    import redis

    from core import bus

    return dict(redis.Redis.from_url(settings.REDIS_URL).pubsub_numsub(bus.LIVE_CHANNEL))[bus.LIVE_CHANNEL.encode()]


def hub_connections() -> int:
    """Redis connections of live hubs on the test database."""
    import redis

    from fleet.consumers import HUB_CLIENT_NAME

    r = redis.Redis.from_url(settings.REDIS_URL)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    return sum(c["name"] == HUB_CLIENT_NAME and int(c["db"]) == db for c in r.client_list())


def test_a_lost_subscription_closes_the_sockets_and_they_can_come_back(web_server, olivia):
    """Redis drops the web process's subscription (a restart, a network cut): its sockets are closed with 4503
    so that browsers reconnect and refetch snapshots, rather than sit on a socket that hears nothing; the next
    socket subscribes afresh and hears events again."""
    import redis

    from fleet.consumers import CLOSE_UNAVAILABLE, HUB_CLIENT_NAME

    headers = {"Cookie": session_cookie(olivia), "Origin": f"http://{web_server}"}
    r = redis.Redis.from_url(settings.REDIS_URL)
    db = r.connection_pool.connection_kwargs.get("db", 0)

    async def scenario():
        url = f"ws://{web_server}/ws/fleet/"
        async with websockets.connect(url, open_timeout=10, additional_headers=headers) as first, \
                websockets.connect(url, open_timeout=10, additional_headers=headers) as second:
            hubs = [c for c in r.client_list()
                    if c["name"] == HUB_CLIENT_NAME and int(c["db"]) == db and int(c["sub"]) > 0]
            assert len(hubs) == 1
            r.client_kill_filter(_id=hubs[0]["id"])
            codes = []
            for ws in (first, second):
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), timeout=10)
                codes.append(ws.close_code)
        async with websockets.connect(url, open_timeout=10, additional_headers=headers) as again:
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", BROADCAST_FROM_ANOTHER_PROCESS],
                                    cwd=ROOT, env=process_env(), check=True, timeout=60)
            return codes, json.loads(await asyncio.wait_for(again.recv(), timeout=10))

    codes, message = asyncio.run(scenario())
    assert codes == [CLOSE_UNAVAILABLE, CLOSE_UNAVAILABLE]
    assert message["events"][0]["data"]["from"] == "another process"


def test_sockets_joining_while_events_stream_in_are_served(web_server, olivia):
    """Bursts of events published while dashboards join: an event that reaches the hub before a socket's
    handshake has finished must wait for it, not fail the send and take every socket down (4503). Ten rounds,
    each starting the process's subscription afresh."""
    import threading
    import time

    import redis

    from core import bus

    headers = {"Cookie": session_cookie(olivia), "Origin": f"http://{web_server}"}
    stop = threading.Event()

    def publish():
        r = redis.Redis.from_url(settings.REDIS_URL)
        n = 0
        while not stop.is_set():  # bursts, so that events queue up right behind a subscription's confirmation
            with r.pipeline(transaction=False) as pipe:
                for _ in range(20):
                    pipe.publish(bus.LIVE_CHANNEL, json.dumps({"event": "episode.finished", "data": {"episode": n}}))
                    n += 1
                pipe.execute()
            time.sleep(0.002)

    async def round_():
        async def one():
            async with websockets.connect(f"ws://{web_server}/ws/fleet/", open_timeout=10,
                                          additional_headers=headers) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                await asyncio.sleep(0.5)
                second = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))  # still open, still served
                return first["events"][0]["event"], second["events"][0]["event"]
        return await asyncio.gather(*[one() for _ in range(5)])

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        for _ in range(10):
            assert asyncio.run(round_()) == [("episode.finished", "episode.finished")] * 5
            wait_for(lambda: hub_subscriptions() == 0, 10, "the round's subscription to end")
    finally:
        stop.set()
        publisher.join(5)
