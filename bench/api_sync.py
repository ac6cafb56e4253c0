"""Parameter sync for remote robots: from the commit of a promotion to the moment each of 16 connected robot clients
holds the new version verified (its push on /ws/robot/ heard, the checkpoint bundle downloaded and its sha256
checked), p99 over every (client, promotion) pair, at least 200. Goal: p99 <= 500 ms.

The ratio line compares that p99 with a floor measured in the same run: the same 16 clients downloading and
verifying the same bundles with no notification to wait for (what the sync costs beyond the bytes themselves).
The real web process (its Procfile default of 2 workers); the clients are threads of this process, each with its own socket and HTTP connection.

    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/api_sync.py [--clients 16] [--rounds 14]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
import time
from pathlib import Path

import _django

_django.setup("_api_bench")

import httpx  # noqa: E402
import torch  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import transaction  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from fleet import control  # noqa: E402
from fleet.models import Robot, Task  # noqa: E402
from gateway import credentials  # noqa: E402
from governance.decisions import deploy_to_fleet  # noqa: E402
from learner.models import PolicyVersion  # noqa: E402
from learner.policy import MLPPolicy, PolicyConfig, save_checkpoint  # noqa: E402


def publish(number: int) -> PolicyVersion:
    torch.manual_seed(number)
    policy = MLPPolicy(PolicyConfig(tasks=["pick-place-v3"]))
    path = f"policies/bench-sync-{number}"
    sha = save_checkpoint(policy, Path(settings.STORAGE_DIR) / path)
    return PolicyVersion.objects.create(number=number, algorithm="bc", checkpoint_path=path, checkpoint_sha256=sha)


class Client(threading.Thread):
    """A robot that holds every version its pushes name, verified; records when it held each."""

    def __init__(self, address: str, token: str):
        super().__init__(daemon=True)
        self.address, self.token = address, token
        self.held: dict[int, float] = {}
        self.ready, self.stop = threading.Event(), threading.Event()
        self.http = httpx.Client(base_url=f"http://{address}", headers={"Authorization": f"Bearer {token}"})

    def fetch(self, version: dict) -> None:
        data = self.http.get(version["url"]).content
        if hashlib.sha256(data).hexdigest() != version["sha256"]:
            raise SystemExit(f"v{version['number']}: the bundle does not match its sha256")

    def run(self):
        with connect(f"ws://{self.address}/ws/robot/",
                     additional_headers={"Authorization": f"Bearer {self.token}"}) as sock:
            self.ready.set()
            while not self.stop.is_set():
                try:
                    message = json.loads(sock.recv(timeout=0.5))
                except TimeoutError:
                    continue
                version = message.get("data", {}).get("version")
                if version and version["number"] not in self.held:
                    self.fetch(version)
                    self.held[version["number"]] = time.time()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=14)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    deploy_to_fleet(publish(1), reason="benchmark base")
    tokens = []
    for i in range(args.clients):
        robot = control.add(f"bench-sync-{i:02d}", [task], None, kind=Robot.Kind.REMOTE)
        tokens.append(credentials.issue(robot, None)[1])
    server, address = _django.start_web("api-sync", 2, API_RATE_LIMIT=1_000_000)
    clients = [Client(address, token) for token in tokens]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.ready.wait(30)
        time.sleep(1.0)  # each client has heard and fetched v1
        latencies, floors = [], []
        for round_ in range(args.rounds):
            version = publish(round_ + 2)
            committed = {}
            with transaction.atomic():
                transaction.on_commit(lambda: committed.setdefault("at", time.time()))  # first after COMMIT
                deploy_to_fleet(version, reason="benchmark")
            deadline = time.time() + 30
            while time.time() < deadline and not all(version.number in c.held for c in clients):
                time.sleep(0.005)
            missing = [c for c in clients if version.number not in c.held]
            if missing:
                sys.exit(f"v{version.number}: {len(missing)} client(s) never held it")
            these = [(c.held[version.number] - committed["at"]) * 1000 for c in clients]
            latencies += these
            described = {"number": version.number, "sha256": version.checkpoint_sha256}
            start = time.time()
            floor_threads = []
            for i, client in enumerate(clients):  # the floor: the same downloads, nothing to wait for
                url = f"/api/v1/robots/{Robot.objects.get(name=f'bench-sync-{i:02d}').pk}/checkpoints/{version.number}"
                floor_threads.append(threading.Thread(target=client.fetch, args=({**described, "url": url},)))
            for thread in floor_threads:
                thread.start()
            for thread in floor_threads:
                thread.join()
            floors.append((time.time() - start) * 1000)
            print(f"v{version.number}: p50 {_django.percentile(these, 50):6.1f} ms  max {max(these):6.1f} ms  "
                  f"(floor: all {args.clients} downloads {floors[-1]:6.1f} ms)")
        p99 = _django.percentile(latencies, 99)
        print(f"{len(latencies)} assignments: p50 {_django.percentile(latencies, 50):.1f} ms, p99 {p99:.1f} ms; "
              f"floor (downloads alone) median {_django.median(floors):.1f} ms; "
              f"ratio p99 / floor {p99 / _django.median(floors):.2f}")
        print(f"promote -> {args.clients} clients hold the version verified, p99: {p99:.1f} ms")
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(5)  # each closes its socket before the server goes
        _django.stop_web(server)


if __name__ == "__main__":
    main()
