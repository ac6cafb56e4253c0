import asyncio
import json
import logging
import time
import weakref

import redis.asyncio
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from fleet import bus

log = logging.getLogger(__name__)

# Close codes in the application range (4000-4999), mirroring HTTP's 401, 403 and 503. After 4503 (this process
# lost, or cannot get, its subscription to live events) browsers reconnect and resynchronise.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4503

# Telemetry that only says "the latest value is ...": within one batch a newer one replaces an older one for the
# same key, and it never triggers a message of its own before PROGRESS_PERIOD has passed since the last one.
LATEST_ONLY = {"robot.progress": "robot"}
PROGRESS_PERIOD = 1.0
_redis_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its async Redis client


def _redis() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    if loop not in _redis_clients:
        _redis_clients[loop] = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return _redis_clients[loop]


class LiveHub:
    """This process's one subscription to the live channel (fleet.events), handing each event to its sockets.

    Per event loop (daphne runs one; tests run one per test). It subscribes when the first socket joins and
    unsubscribes when the last one leaves; a socket is accepted only once the subscription stands, so it misses
    nothing published after its handshake. If the subscription fails, every socket is closed with 4503: browsers
    reconnect and resynchronise rather than sit on a silent socket.
    """

    def __init__(self):
        self.sockets: set[FleetConsumer] = set()
        self.task: asyncio.Task | None = None
        self.subscribed: asyncio.Future | None = None

    @classmethod
    def current(cls) -> "LiveHub":
        loop = asyncio.get_running_loop()
        if loop not in _hubs:
            _hubs[loop] = cls()
        return _hubs[loop]

    async def join(self, socket: "FleetConsumer") -> None:
        self.sockets.add(socket)
        if self.task is None:
            self.subscribed = asyncio.get_running_loop().create_future()
            self.task = asyncio.create_task(self.listen(self.subscribed))
        try:
            await asyncio.shield(self.subscribed)
        except BaseException:
            self.leave(socket)
            raise

    def leave(self, socket: "FleetConsumer") -> None:
        self.sockets.discard(socket)
        if not self.sockets and self.task is not None:
            self.task.cancel()
            self.task = self.subscribed = None

    async def listen(self, subscribed: asyncio.Future) -> None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL, client_name=HUB_CLIENT_NAME)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(bus.LIVE_CHANNEL)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":  # Redis confirmed: nothing published from now on is missed
                    if subscribed.done():  # redis-py reconnected and subscribed again: deltas may be lost
                        raise redis.ConnectionError("the live channel's connection was re-established")
                    subscribed.set_result(None)
                elif message["type"] == "message":
                    item = json.loads(message["data"])
                    for socket in list(self.sockets):
                        await socket.deliver(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("lost the live channel's subscription")
            if not subscribed.done():
                subscribed.set_exception(exc)
            sockets, self.sockets, self.task, self.subscribed = list(self.sockets), set(), None, None
            for socket in sockets:
                await socket.close(code=CLOSE_UNAVAILABLE)
        finally:
            await pubsub.aclose()
            await client.aclose()


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its LiveHub
HUB_CLIENT_NAME = "sopweb-live-hub"  # as CLIENT LIST shows the subscription's connection


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Pushes fleet deltas to a dashboard. It never writes: commands go through POST views.

    Robots' progress is not published (16 robots x 50 dashboards would be 800 deliveries a second, nearly all
    coalesced away): each socket reads the actors' progress hash once a second and sends what
    changed, riding along with the next message.

    Deltas are coalesced by a token bucket of DASHBOARD_PUSH_RATE messages per second (holding one second's
    worth): a change (an episode, a status, a version) goes out at once while tokens last, so a normal fleet costs
    no latency; under a flood, everything that arrives meanwhile leaves together in the next message
    ({"events": [...]}), so no browser gets more than DASHBOARD_PUSH_RATE messages a second.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await user.ahas_perm("fleet.view_robot"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.rate = settings.DASHBOARD_PUSH_RATE
        self.tokens = self.burst = max(1.0, self.rate)
        self.refilled = self.last_sent = asyncio.get_running_loop().time()
        self.pending: list[dict] = []
        self.latest: dict[tuple, int] = {}  # (event, key) -> index in pending
        self.urgent = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.progress_seen: dict[bytes, bytes] = {}
        self.hub = LiveHub.current()
        try:
            await self.hub.join(self)
        except Exception:  # Redis unreachable: refuse rather than accept a socket that would never hear anything
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        await self.accept()
        self.poller = asyncio.create_task(self.poll_progress())

    async def disconnect(self, code):
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.leave(self)
        for handle in (getattr(self, "timer", None), getattr(self, "poller", None)):
            if handle is not None:
                handle.cancel()

    async def deliver(self, item: dict) -> None:
        """A delta from the live channel (fleet.events), in the order it was published."""
        self.add(item)
        await self.schedule()

    def add(self, item: dict) -> None:
        key_field = LATEST_ONLY.get(item["event"])
        key = (item["event"], item["data"].get(key_field)) if key_field else None
        if key in self.latest:
            self.pending[self.latest[key]] = item
        else:
            if key:
                self.latest[key] = len(self.pending)
            self.pending.append(item)
        self.urgent = self.urgent or key is None

    async def poll_progress(self):
        while True:
            await asyncio.sleep(PROGRESS_PERIOD)
            try:
                raw = await _redis().hgetall(bus.PROGRESS_KEY)
            except Exception:  # Redis away for a moment: the tiles wait for the next round
                log.warning("could not read robots' progress", exc_info=True)
                continue
            changed = {field: value for field, value in raw.items() if self.progress_seen.get(field) != value}
            self.progress_seen = raw
            fresh = bus.fresh_progress(changed, time.time())
            for robot in sorted(fresh):
                self.add({"event": "robot.progress", "data": fresh[robot]})
            if fresh:
                await self.schedule()

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now

    async def schedule(self):
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.refill(now)
        if self.urgent and self.tokens >= 1:
            await self.flush()
            return
        due = now + max(0.0, (1 - self.tokens) / self.rate)
        if not self.urgent:
            due = max(due, self.last_sent + PROGRESS_PERIOD)
        if self.timer is not None:
            if self.timer_due <= due:
                return  # an earlier flush is already due: this change rides along
            self.timer.cancel()
        self.timer_due = due
        self.timer = loop.call_at(due, lambda: asyncio.ensure_future(self.flush_due()))

    async def flush_due(self):
        self.timer = None
        self.refill(asyncio.get_running_loop().time())
        await self.flush()

    async def flush(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending, self.latest, self.urgent = self.pending, [], {}, False
        if batch:
            self.tokens -= 1
            self.last_sent = asyncio.get_running_loop().time()
            await self.send_json({"events": batch})
