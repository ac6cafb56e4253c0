"""The one way live events leave the server: a small JSON delta published on one Redis channel after commit.

A sender pays one PUBLISH (a single round trip, shared with a worker's nudge when there is one). Each web
process holds one subscription to the channel and hands every event to its own dashboards' sockets
(`fleet.consumers.LiveHub`), so the fan-out is paid by the processes that serve the sockets, once per process
rather than once per socket, and never by an actor or a request that commits something.

An event is `{"event": name, "data": {...}}`. Pub/sub does not keep messages: a page that lost its socket
refetches a snapshot when it reconnects (static/js/live.js).
"""
from __future__ import annotations

import json
import logging
import time

from django.db import transaction

from core import bus

log = logging.getLogger(__name__)


def broadcast(event: str, data: dict, *, nudge: tuple[str, dict] | None = None) -> None:
    """Send `{"event": event, "data": data}` to every dashboard now. `nudge` (channel, message) goes first in the
    same round trip: a worker waiting for this change (the learner for training data, actors for a version)
    hears of it before the dashboards do. A Redis failure loses the messages, not the change that caused them:
    it is logged once per outage (core.outages) and not raised; pages resynchronise when their socket comes back,
    and the learner and actors poll what a lost nudge would have told them. The event carries its publication time
    ("at", seconds since the epoch): the web process measures its delivery lag (core.metrics)."""
    def send():
        with bus.client().pipeline(transaction=False) as pipe:
            if nudge is not None:
                pipe.publish(nudge[0], json.dumps(nudge[1]))
            pipe.publish(bus.LIVE_CHANNEL, json.dumps({"event": event, "data": data, "at": time.time()}))
            pipe.execute()

    bus.degrade(send)


def broadcast_on_commit(event: str, data: dict, *, nudge: tuple[str, dict] | None = None) -> None:
    """Broadcast once the current transaction commits (at once outside one), so nobody hears of a change that
    rolled back."""
    transaction.on_commit(lambda: broadcast(event, data, nudge=nudge))
