import asyncio
import json
import logging
import time
import weakref

import redis.asyncio
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts import sessions
from core import bus, metrics
from core.outages import Outage

log = logging.getLogger(__name__)

# Close codes in the application range (4000-4999), mirroring HTTP's 401, 403 and 503. After 4503 (this process
# lost, or cannot get, its subscription to live events) browsers reconnect and resynchronise; after 4401 (the
# session ended: logout, deactivation, idle timeout, password change) the page reloads and asks for a login; after
# 4403 (the permission was removed) it stays offline.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4503
PERMISSION = "fleet.view_robot"  # what a dashboard socket needs, at connect and at every re-check
CLOSE_CODES = {sessions.UNAUTHENTICATED: CLOSE_UNAUTHENTICATED, sessions.FORBIDDEN: CLOSE_FORBIDDEN}

# Telemetry that only says "the latest value is ...": within one batch a newer one replaces an older one for the
# same key, and it never triggers a message of its own before PROGRESS_PERIOD has passed since the last one.
LATEST_ONLY = {"robot.progress": "robot"}
PROGRESS_PERIOD = 1.0
HEARTBEAT = {"events": [{"event": "live.heartbeat", "data": {}}]}
outage = Outage("Redis (live events)")  # the hubs' subscriptions and progress reads, logged once per outage


class LiveHub:
    """This process's one subscription to the live channel (core.events) and its one reader of the robots'
    progress hash, handing both to its sockets.

    Per event loop (daphne runs one; tests run one per test). It starts when the first socket joins and stops when
    the last one leaves; a socket is accepted only once the subscription stands, so it misses nothing published
    after its handshake. If the subscription fails, every socket is closed with 4503: browsers reconnect and
    resynchronise rather than sit on a silent socket.

    Progress (bus.PROGRESS_KEY) is read once a second and only what changed since the last read is handed on:
    one HGETALL a second per process, however many dashboards it serves. A socket that joins meanwhile hears
    each robot's next change (a running robot's step changes every second); its page rendered the hash itself.

    People's sessions: the same subscription hears bus.SESSIONS_CHANNEL (accounts.sessions), and a session that
    ended closes its sockets with 4401 at once. Every WS_PERMISSION_RECHECK_SECONDS each socket's session and
    permission are checked again against the database (an expired session: 4401; a permission removed: 4403).
    """

    def __init__(self):
        self.sockets: set[FleetConsumer] = set()
        self.task: asyncio.Task | None = None
        self.subscribed: asyncio.Future | None = None
        self.stopping: asyncio.Task | None = None  # the previous subscription, cancelled, closing its connections

    @classmethod
    def current(cls) -> "LiveHub":
        loop = asyncio.get_running_loop()
        if loop not in _hubs:
            _hubs[loop] = cls()
        return _hubs[loop]

    async def join(self, socket: "FleetConsumer") -> None:
        self.sockets.add(socket)
        if self.task is None and self.stopping is not None:
            stopping, self.stopping = self.stopping, None
            await asyncio.gather(stopping, return_exceptions=True)  # its connections closed before new ones open
        if self.task is None:
            self.subscribed = asyncio.get_running_loop().create_future()
            self.task = asyncio.create_task(self.run(self.subscribed))
        try:
            # A Redis that accepts the connection but never answers (stopped, partitioned) must not hold the handshake.
            await asyncio.wait_for(asyncio.shield(self.subscribed), timeout=settings.REDIS_SOCKET_TIMEOUT)
        except BaseException:
            self.leave(socket)
            raise

    def leave(self, socket: "FleetConsumer") -> None:
        self.sockets.discard(socket)
        if not self.sockets and self.task is not None:
            self.task.cancel()
            self.stopping, self.task, self.subscribed = self.task, None, None

    async def run(self, subscribed: asyncio.Future) -> None:
        """Subscribe, read progress, hand both on until cancelled (the last socket left) or the subscription fails,
        in which case every socket is closed so its browser reconnects to a fresh subscription."""
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL, client_name=HUB_CLIENT_NAME)
        poller = asyncio.create_task(self.poll_progress(client))
        rechecker = asyncio.create_task(self.recheck_sockets())
        try:
            await self.listen(client, subscribed)
            raise redis.ConnectionError("the live channel's subscription ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outage.failed(exc, log)  # browsers reconnect with back-off; one line per outage, not per attempt
            if not subscribed.done():
                subscribed.set_exception(exc)
            if self.task is asyncio.current_task():  # not already replaced by a newer subscription
                sockets, self.sockets, self.task, self.subscribed = list(self.sockets), set(), None, None
                for socket in sockets:
                    await self.close(socket)
        finally:
            poller.cancel()
            rechecker.cancel()
            await client.aclose()

    async def listen(self, client: redis.asyncio.Redis, subscribed: asyncio.Future) -> None:
        pubsub = client.pubsub()
        channels = {bus.LIVE_CHANNEL.encode(), bus.SESSIONS_CHANNEL.encode()}
        confirmed: set[bytes] = set()
        try:
            await pubsub.subscribe(*channels)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":  # Redis confirmed: nothing published from now on is missed
                    if subscribed.done():  # redis-py reconnected and subscribed again: deltas may be lost
                        raise redis.ConnectionError("the live channel's connection was re-established")
                    confirmed.add(message["channel"])
                    if confirmed == channels:
                        subscribed.set_result(None)
                        outage.ok(log)
                elif message["type"] == "message" and message["channel"] == bus.SESSIONS_CHANNEL.encode():
                    await self.session_ended(message["data"])
                elif message["type"] == "message":
                    item = _event(message["data"])
                    if item is None:
                        log.error("dropped a malformed live event: %r", message["data"][:200])
                    else:
                        await self.deliver([item])
        finally:
            await pubsub.aclose()

    async def poll_progress(self, client: redis.asyncio.Redis) -> None:
        """Once a second: what changed in the robots' progress, and a heartbeat while Redis answers. A read that
        fails or stalls (bounded by REDIS_SOCKET_TIMEOUT) sends nothing, so pages fall silent and say so."""
        seen: dict[bytes, bytes] = {}
        while True:
            await asyncio.sleep(PROGRESS_PERIOD)
            try:
                raw = await asyncio.wait_for(client.hgetall(bus.PROGRESS_KEY), timeout=settings.REDIS_SOCKET_TIMEOUT)
                changed = {field: value for field, value in raw.items() if seen.get(field) != value}
                seen = raw
                fresh = bus.fresh_progress(changed, time.time())
                outage.ok(log)
            except Exception as exc:  # Redis away, or an unreadable entry: the tiles wait for the next round
                outage.failed(exc, log)
                continue
            if fresh:
                await self.deliver([{"event": "robot.progress", "data": fresh[robot]} for robot in sorted(fresh)])
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """While Redis answers, every socket hears something at least every DASHBOARD_HEARTBEAT_SECONDS (a
        "live.heartbeat" when nothing else went out): a page that has heard nothing for a few periods says
        "reconnecting" and, once words flow again, resynchronises (static/js/live.js)."""
        period = settings.DASHBOARD_HEARTBEAT_SECONDS
        if not period:
            return
        now = asyncio.get_running_loop().time()
        for socket in list(self.sockets):
            if socket.accepted and not socket.ended and now - socket.last_sent >= period:
                socket.last_sent = now
                try:
                    await socket.send_json(HEARTBEAT)
                except Exception:
                    log.warning("could not send a heartbeat to a dashboard socket", exc_info=True)

    async def session_ended(self, raw: bytes) -> None:
        """A session (or every session of a user) ended: close its sockets now, before any further delta."""
        try:
            ended = json.loads(raw)
            tag, user = ended.get("session"), ended.get("user")
        except (ValueError, AttributeError):
            log.error("dropped a malformed session message: %r", raw[:200])
            return
        for socket in list(self.sockets):
            if (tag is not None and socket.session_tag == tag) or (user is not None and socket.user_id == user):
                await self.end(socket, CLOSE_UNAUTHENTICATED)

    async def recheck_sockets(self) -> None:
        """Every WS_PERMISSION_RECHECK_SECONDS, ask the database whether each socket's session still logs its user
        in with the permission (once per session, however many sockets share it)."""
        while True:
            await asyncio.sleep(settings.WS_PERMISSION_RECHECK_SECONDS)
            verdicts: dict[tuple, str | None] = {}
            for socket in list(self.sockets):
                key = (socket.session_key, socket.user_id)
                try:
                    if key not in verdicts:
                        verdicts[key] = await database_sync_to_async(sessions.socket_verdict)(*key, PERMISSION)
                except Exception:  # the database away for a moment: the next round decides
                    log.warning("could not re-check a dashboard socket's session", exc_info=True)
                    continue
                if verdicts[key] is not None and socket in self.sockets:
                    await self.end(socket, CLOSE_CODES[verdicts[key]])

    async def end(self, socket: "FleetConsumer", code: int) -> None:
        self.sockets.discard(socket)  # it hears nothing more; its disconnect leaves the hub as usual
        socket.stop_sending()
        try:
            await socket.close(code=code)
        except Exception:
            log.warning("could not close a dashboard socket", exc_info=True)

    async def deliver(self, items: list[dict]) -> None:
        for socket in list(self.sockets):
            try:
                await socket.deliver(items)
            except Exception:  # that socket's trouble, not the others': it goes, they stay
                log.exception("closing a dashboard socket that could not take a delta")
                self.sockets.discard(socket)
                await self.close(socket)

    @staticmethod
    async def close(socket: "FleetConsumer") -> None:
        try:
            await socket.close(code=CLOSE_UNAVAILABLE)
        except Exception:
            log.warning("could not close a dashboard socket", exc_info=True)


def _event(raw: bytes) -> dict | None:
    """A published delta, {"event": name, "data": {...}}, or None if it is not one."""
    try:
        item = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(item, dict) and isinstance(item.get("event"), str) and isinstance(item.get("data"), dict)
    return item if ok else None


def _without_time(item: dict) -> dict:
    """A delta as pages get it: the publication time (core.events) is the server's, for its lag metric."""
    return {key: value for key, value in item.items() if key != "at"} if "at" in item else item


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its LiveHub
HUB_CLIENT_NAME = "sopweb-live-hub"  # as CLIENT LIST shows the subscription's connection


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Pushes fleet deltas to a dashboard. It never writes: commands go through POST views.

    Robots' progress is not published (16 robots x 50 dashboards would be 800 deliveries a second, nearly all
    coalesced away): the process's LiveHub reads the actors' progress hash once a second and hands on what
    changed, which rides along with the socket's next message.

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
        if not await user.ahas_perm(PERMISSION):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Who this socket serves, for the hub's session messages and re-checks. A scope without a session (an
        # in-process test's) is judged by its user alone.
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        self.session_tag = sessions.session_tag(self.session_key) if self.session_key else None
        self.user_id = user.pk
        self.ended = False
        self.rate = settings.DASHBOARD_PUSH_RATE
        self.tokens = self.burst = max(1.0, self.rate)
        self.refilled = self.last_sent = asyncio.get_running_loop().time()
        self.pending: list[dict] = []
        self.latest: dict[tuple, int] = {}  # (event, key) -> index in pending
        self.urgent = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.flushes: set[asyncio.Task] = set()  # timed flushes in flight (the loop holds tasks only weakly)
        self.accepted = False  # until then deltas are only collected: a socket cannot send before its accept
        self.hub = LiveHub.current()
        try:
            await self.hub.join(self)
        except Exception:  # Redis unreachable: refuse rather than accept a socket that would never hear anything
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if self.ended:  # its session ended while it joined: the hub has closed it
            return
        await self.accept()
        self.accepted = True
        metrics.socket_opened("dashboard")
        if self.pending:  # what arrived between the subscription and the handshake's end
            await self.schedule()

    async def disconnect(self, code):
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.leave(self)
        self.stop_sending()
        if getattr(self, "accepted", False):
            self.accepted = False
            metrics.socket_closed("dashboard")

    def stop_sending(self) -> None:
        """Nothing more goes out: pending deltas and timed flushes are dropped (the socket is closing)."""
        self.ended = True
        if getattr(self, "timer", None) is not None:
            self.timer.cancel()
            self.timer = None
        for task in list(getattr(self, "flushes", ())):
            task.cancel()

    async def deliver(self, items: list[dict]) -> None:
        """Deltas from the hub (core.events, or robots' progress), in order."""
        if self.ended:
            return
        for item in items:
            self.add(item)
        if self.accepted:
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
        self.timer = loop.call_at(due, self.start_flush)

    def start_flush(self) -> None:
        task = asyncio.ensure_future(self.flush_due())
        self.flushes.add(task)
        task.add_done_callback(self.flush_done)

    def flush_done(self, task: asyncio.Task) -> None:
        self.flushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a timed send to a dashboard failed: %r", task.exception())

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
            metrics.events_sent(batch)  # each item's publication time, then the items as pages know them
            await self.send_json({"events": [_without_time(item) for item in batch]})
