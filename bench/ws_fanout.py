"""Live fan-out: from an episode's commit to its event arriving at each of 50 connected websocket clients (p50,
p99), against a bare channel-layer group_send to the same 50 clients, in the same run, on the same server.

The product path: ingest_episode commits the episode; its on-commit hook publishes the event on the live channel
(Redis pub/sub); the server's one subscription hands it to each client's FleetConsumer, which coalesces and sends
it.
The baseline: group_send straight from this process to a bench-only consumer (bench/_bare_asgi.py) that forwards
each message as it comes; every client holds one socket of each kind. For reference (the product no longer uses a
channel layer), a third socket per client holds its own Redis subscription and forwards each PUBLISH as it comes:
the product's transport without the product. Meanwhile 16 robots report progress once a second each (as actors
do), which the server reads and forwards to every product socket, as on a real fleet. Goal: product p99 <= 100 ms, ratio of p99s <= 1.5.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/ws_fanout.py [--clients 50] [--events 60]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import _django

_django.setup()

import _bare_asgi  # noqa: E402  (configures the baseline's channel layer)
import redis  # noqa: E402
from asgiref.sync import async_to_sync  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from fleet.ingest import ingest_episode  # noqa: E402
from fleet.models import Robot, Task  # noqa: E402
from fleet.sim import episode_data  # noqa: E402

CLIENTS = r"""
import asyncio, json, sys, time
import websockets

url, cookie, n, expected = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
arrivals = {"product": {}, "bare": {}, "pubsub": {}}  # event id -> list of arrival times (one per client)
messages = []  # arrival times of every message on the product sockets

async def client(path, kind):
    headers = {"Cookie": cookie, "Origin": "http://" + url}
    async with websockets.connect(f"ws://{url}{path}", additional_headers=headers, max_size=None) as ws:
        ready.append(1)
        while True:
            raw = await ws.recv()
            at = time.time()
            if kind == "product":
                messages.append(at)
            for item in json.loads(raw).get("events", []):
                if item["event"] in ("episode.finished", "bench.bare", "bench.pubsub"):
                    key = item["data"]["episode"] if kind == "product" else item["data"]["mark"]
                    arrivals[kind].setdefault(str(key), []).append(at)
            if all(len(arrivals[k]) >= expected and all(len(v) >= n for v in arrivals[k].values())
                   for k in arrivals):
                return

ready = []
async def main():
    tasks = [asyncio.create_task(client(p, k)) for _ in range(n) for p, k in (
        ("/ws/fleet/", "product"), ("/ws/bare/", "bare"), ("/ws/bare-pubsub/", "pubsub"))]
    while len(ready) < 3 * n:
        failed = [t.exception() for t in tasks if t.done()]
        if failed:
            print("FAILED", repr(failed[0]), flush=True)
            import os; os._exit(1)
        await asyncio.sleep(0.05)
    print("READY", flush=True)
    await asyncio.wait(tasks, timeout=float(sys.argv[5]))
    print(json.dumps({"arrivals": arrivals, "messages": len(messages),
                      "seconds": max(messages) - min(messages)}), flush=True)
    import os; os._exit(0)

asyncio.run(main())
"""


TELEMETRY = """
import sys, time, django
django.setup()
from fleet.control import report_progress
robots, step = int(sys.argv[1]), 0
while robots:
    time.sleep(1 / robots)
    step += 1
    report_progress({"robot": 1000 + step % robots, "step": step, "control": "policy"})
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values, q):
    return _django.percentile(values, q)


def main():
    sys.stdout.reconfigure(line_buffering=True)  # a run stopped by a time limit still shows how far it got
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--events", type=int, default=60, help="episodes committed (and as many bare sends)")
    parser.add_argument("--robots", type=int, default=16, help="robots sending progress telemetry at 1 Hz each")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two events (~3 episodes/s)")
    args = parser.parse_args()

    user = User.objects.create_user("bench-operator", password="x")
    user.groups.add(Group.objects.get(name="operators"))
    web = Client()
    web.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={web.cookies[settings.SESSION_COOKIE_NAME].value}"
    task = Task.objects.create(env_name="pick-place-v3")
    robot = Robot.objects.create(name="bench-robot")
    arrays = episode_data_example()

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_django.ROOT / "bench"), str(_django.ROOT)]))
    log = open(_django.ROOT / "var" / "bench-ws-web.log", "wb")
    from sopweb.web import command

    # The product's web server (one worker: every socket on one process, as the figure has always been taken).
    server = subprocess.Popen([sys.executable, *command("127.0.0.1", port, 1, app="_bare_asgi:application")],
                              cwd=_django.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    clients = None
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the web process did not start; see var/bench-ws-web.log")
            time.sleep(0.1)
        clients = subprocess.Popen([sys.executable, "-c", CLIENTS, f"127.0.0.1:{port}", cookie, str(args.clients),
                                    str(args.events), str(30 + args.events * args.gap * 2)], stdout=subprocess.PIPE, text=True, env=env)
        answer = clients.stdout.readline().strip()
        if answer != "READY":
            raise SystemExit(f"the clients did not all connect: {answer or 'no answer'}")
        print(f"{args.clients} clients connected, each with a product socket and two bare ones")

        # 16 robots' progress at 1 Hz each, from another process (as actors send theirs).
        telemetry = subprocess.Popen([sys.executable, "-c", TELEMETRY, str(args.robots)], cwd=_django.ROOT, env=env)
        layer = get_channel_layer(_bare_asgi.LAYER)
        committed, sent, published = {}, {}, {}
        r = redis.Redis.from_url(settings.REDIS_URL)
        for i in range(args.events):
            now = timezone.now()
            stamp = {}
            with transaction.atomic():
                transaction.on_commit(lambda: stamp.setdefault("at", time.time()))  # runs first after COMMIT
                episode, _ = ingest_episode(uuid=uuid.uuid4(), task=task.env_name, seed=i, outcome="timeout",
                                            arrays=arrays, robot_id=robot.pk, started_at=now - timedelta(seconds=5),
                                            finished_at=now)
            committed[str(episode.pk)] = stamp["at"]
            time.sleep(args.gap / 3)
            sent[str(i)] = time.time()
            async_to_sync(layer.group_send)("bench-bare", {"type": "bare.event", "event": "bench.bare",
                                                           "data": {"mark": i}})
            time.sleep(args.gap / 3)
            published[str(i)] = time.time()
            r.publish(_bare_asgi.BARE_CHANNEL, json.dumps({"events": [{"event": "bench.pubsub", "data": {"mark": i}}]}))
            time.sleep(args.gap / 3)
        telemetry.terminate()
        out, _ = clients.communicate(timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if clients and clients.poll() is None:
            clients.kill()
        server.terminate()
        server.wait(10)

    product = [(at - committed[k]) * 1000 for k, ats in result["arrivals"]["product"].items() for at in ats]
    bare = [(at - sent[k]) * 1000 for k, ats in result["arrivals"]["bare"].items() for at in ats]
    pubsub = [(at - published[k]) * 1000 for k, ats in result["arrivals"]["pubsub"].items() for at in ats]
    expected = args.clients * args.events
    if len(product) != expected or len(bare) != expected or len(pubsub) != expected:
        raise SystemExit(f"lost deliveries: {len(product)} product, {len(bare)} bare and {len(pubsub)} bare pub/sub "
                         f"of {expected} each")
    rate = result["messages"] / args.clients / result["seconds"]
    print(f"deliveries: {len(product)} product, {len(bare)} bare, {len(pubsub)} bare pub/sub")
    print(f"product (commit -> client): p50 {percentile(product, 50):.1f} ms, p99 {percentile(product, 99):.1f} ms")
    print(f"bare group_send -> client:  p50 {percentile(bare, 50):.1f} ms, p99 {percentile(bare, 99):.1f} ms")
    print(f"reference, bare PUBLISH -> a subscription per socket -> client (the product's transport without the "
          f"product): p50 {percentile(pubsub, 50):.1f} ms, p99 {percentile(pubsub, 99):.1f} ms; "
          f"product / reference p99 {percentile(product, 99) / percentile(pubsub, 99):.2f}")
    print(f"messages per product socket: {rate:.1f}/s (events offered: {1 / args.gap + args.robots:.1f}/s; "
          f"limit DASHBOARD_PUSH_RATE = {settings.DASHBOARD_PUSH_RATE:g}/s)")
    print(f"ratio p99 product / bare (goal <= 1.5, and product p99 <= 100 ms): "
          f"{percentile(product, 99) / percentile(bare, 99):.2f}")


def episode_data_example(steps: int = 50) -> dict:
    """A small valid episode, so that ingestion stays a small part of the measured path."""
    import numpy as np

    rng = np.random.default_rng(0)
    recorder = episode_data.EpisodeRecorder(steps, nq=16, nv=15)
    for _ in range(steps):
        recorder.record(rng.normal(size=episode_data.OBS_DIM), rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4),
                        episode_data.POLICY, 0.0, False, (np.zeros(16), np.zeros(15), np.zeros(3), np.eye(4)[0]))
    return recorder.finish()


if __name__ == "__main__":
    main()
