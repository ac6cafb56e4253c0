"""Policies held by an actor process: keyed by version and checksum, prefetched when a version is assigned.

Torch is imported here lazily, so the web process never loads it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict

from core import bus
from core.outages import Outage

log = logging.getLogger(__name__)


class PolicyCache:
    def __init__(self, size: int = 4):
        self.size = size
        self._policies: OrderedDict[tuple[int, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self._prefetcher: threading.Thread | None = None

    def get(self, version_id: int, path: str, sha256: str):
        """The loaded policy for a version; loads and checks it on a miss (CheckpointError if it is corrupt)."""
        key = (version_id, sha256)
        with self._lock:
            if key in self._policies:
                self._policies.move_to_end(key)
                return self._policies[key]
        from learner.checkpoint_store import local_dir
        from learner.policy import load_checkpoint

        policy = load_checkpoint(local_dir(path, sha256), expected_sha256=sha256)
        with self._lock:
            self._policies[key] = policy
            self._policies.move_to_end(key)
            while len(self._policies) > self.size:
                self._policies.popitem(last=False)
        return policy

    def start_prefetching(self) -> None:
        """Listen for version assignments and load them before the robot's next episode asks."""
        if self._prefetcher is not None and self._prefetcher.is_alive():
            return
        self._prefetcher = threading.Thread(target=self._listen, name="policy-prefetch", daemon=True)
        self._prefetcher.start()

    def _listen(self) -> None:
        """Subscribe and prefetch what is announced, for the life of the process. A Redis that stops answering
        (the client's socket timeout, or its health check on the idle connection) or goes away is waited for with
        back-off and jitter, and logged once per outage; nudges published meanwhile are lost, and the robots load
        their versions at their next episode instead."""
        outage = Outage("Redis (policy prefetch)")
        while True:
            pubsub = None
            try:
                pubsub = bus.client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(bus.VERSIONS_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    outage.ok(log)
                    if message is not None:
                        self._prefetch(json.loads(message["data"]))
            except Exception as exc:  # a Redis restart must not kill prefetching for the life of the worker
                outage.failed(exc, log)
                time.sleep(outage.delay())
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _prefetch(self, message: dict) -> None:
        try:
            self.get(message["version"], message["path"], message["sha256"])
        except Exception:
            log.exception("could not prefetch policy version %s", message.get("version"))
            return
        mark_ready(message["robot"], message["version"])


def mark_ready(robot_id: int, version_id: int) -> None:
    """Record that this actor process holds `version_id` loaded for the robot: one field per process, since any
    actor process may run the robot's next episode (read by dashboards and the sync benchmark)."""
    key = bus.ready_key(robot_id)
    pipe = bus.client().pipeline()
    pipe.hset(key, str(os.getpid()), json.dumps({"version": version_id, "at": time.time()}))
    pipe.expire(key, 86_400)
    pipe.execute()


cache = PolicyCache()
