"""The one way live events leave the server: a small JSON delta to a channel group, sent after commit.

Sending happens on one background event loop per process, in order: a `group_send` costs several Redis round
trips, and `async_to_sync` would add a fresh event loop per call — milliseconds that a committing actor or
request should not wait for. Pending events are flushed when the process exits.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading

from channels.layers import get_channel_layer
from django.db import transaction

FLEET_GROUP = "fleet"
MAX_BATCH = 100
log = logging.getLogger(__name__)


def _by_group(batch: list[tuple[str, dict]]) -> list[tuple[str, list[dict]]]:
    """Consecutive runs of the same group, so each group still hears its events in order."""
    runs: list[tuple[str, list[dict]]] = []
    for group, item in batch:
        if runs and runs[-1][0] == group:
            runs[-1][1].append(item)
        else:
            runs.append((group, [item]))
    return runs


class _Broadcaster:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._loop = None
        self._queue = None

    def _start(self) -> None:
        # Per process: a forked worker child inherits the parent's objects but not its threads.
        with self._lock:
            if self._pid == os.getpid():
                return
            loop = asyncio.new_event_loop()
            queue_ready = threading.Event()

            def run():
                asyncio.set_event_loop(loop)
                self._queue = asyncio.Queue()
                queue_ready.set()
                loop.run_until_complete(self._drain())

            threading.Thread(target=run, name="broadcaster", daemon=True).start()
            queue_ready.wait()
            self._loop, self._pid = loop, os.getpid()

    async def _drain(self) -> None:
        layer = get_channel_layer()
        while True:
            batch = [await self._queue.get()]
            # Whatever queued up meanwhile leaves with it: one group_send per group instead of one per event
            # (each costs ~0.5 ms of this process's CPU), in order.
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            for group, items in _by_group(batch):
                try:
                    await layer.group_send(group, {"type": "fleet.events", "events": items})
                except Exception:  # a Redis hiccup loses live deltas; pages refetch snapshots on reconnect
                    log.exception("could not broadcast %s", ", ".join(item["event"] for item in items))
            for _ in batch:
                self._queue.task_done()

    def submit(self, group: str, message: dict) -> None:
        self._start()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (group, message))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every submitted event has been handed to the channel layer."""
        if self._pid != os.getpid():
            return
        future = asyncio.run_coroutine_threadsafe(self._queue.join(), self._loop)
        try:
            future.result(timeout)
        except TimeoutError:
            log.warning("gave up flushing live events after %.0f s", timeout)


_broadcaster = _Broadcaster()
atexit.register(_broadcaster.flush)


def broadcast(event: str, data: dict, group: str = FLEET_GROUP) -> None:
    """Send `{"event": event, "data": data}` to every socket in `group` (consumers coalesce and forward it)."""
    _broadcaster.submit(group, {"event": event, "data": data})


def flush(timeout: float = 5.0) -> None:
    _broadcaster.flush(timeout)


def broadcast_on_commit(event: str, data: dict, group: str = FLEET_GROUP) -> None:
    """Broadcast once the current transaction commits, so no browser hears of a change that rolled back."""
    transaction.on_commit(lambda: broadcast(event, data, group))
