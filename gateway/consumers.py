"""/ws/robot/: a remote robot hears of a new assignment or an operator's command the moment it is committed.

The robot authenticates with its token in the handshake's `Authorization: Bearer` header or, when its websocket
library cannot set headers, in its first message `{"type": "auth", "token": ...}` within AUTH_SECONDS; never in the
URL. Each message it receives is the whole assignment (what GET /api/v1/robots/{id}/assignment answers), so a
missed message costs nothing: the next one, or a poll, carries the full state. A revoked token's socket is closed
with 4401 at once (the revocation's message), and at the latest at its next push (each checks the token again, so a
message lost to a Redis outage delays the close only until the next push); a token that expires closes its socket
at the expiry. A robot keeps at most ROBOT_SOCKETS sockets in one web process: a further one closes its oldest
(a robot that reconnected after a network fault may leave a half-open socket behind).

One Redis subscription per process (RobotHub) serves every robot socket it holds, as LiveHub does for dashboards.
"""
from __future__ import annotations

import asyncio
import json
import logging

import redis.asyncio
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from core import bus, metrics
from core.outages import Outage
from gateway import assignment, credentials

log = logging.getLogger(__name__)
CLOSE_UNAUTHENTICATED = 4401
CLOSE_UNAVAILABLE = 4503
CLOSE_REPLACED = 4409  # the robot opened more sockets than ROBOT_SOCKETS: its oldest goes
AUTH_SECONDS = 5.0
ROBOT_SOCKETS = 4
_hubs: dict = {}


outage = Outage("Redis (robots' channel)")


class RobotHub:
    """This process's subscription to bus.ROBOTS_CHANNEL, handing each message to the sockets of its robot."""

    def __init__(self):
        self.sockets: dict[int, dict[RobotConsumer, None]] = {}  # per robot, in the order they joined
        self.task: asyncio.Task | None = None
        self.subscribed: asyncio.Future | None = None

    @classmethod
    def current(cls) -> RobotHub:
        loop = asyncio.get_running_loop()
        if loop not in _hubs:
            _hubs[loop] = cls()
        return _hubs[loop]

    async def join(self, socket: RobotConsumer) -> None:
        group = self.sockets.setdefault(socket.robot_id, {})
        while len(group) >= ROBOT_SOCKETS:
            oldest = next(iter(group))
            group.pop(oldest)
            log.info("closing robot %s's oldest socket: it opened more than %d", socket.robot_id, ROBOT_SOCKETS)
            await oldest.close(CLOSE_REPLACED)
        group[socket] = None
        if self.task is None:
            self.subscribed = asyncio.get_running_loop().create_future()
            self.task = asyncio.create_task(self.run(self.subscribed))
        # A Redis that accepts connections but never answers must not hold the handshake for ever.
        await asyncio.wait_for(asyncio.shield(self.subscribed), timeout=settings.REDIS_SOCKET_TIMEOUT)

    def leave(self, socket: RobotConsumer) -> None:
        group = self.sockets.get(socket.robot_id, {})
        group.pop(socket, None)
        if not group:
            self.sockets.pop(socket.robot_id, None)
        if not self.sockets and self.task is not None:
            self.task.cancel()
            self.task = self.subscribed = None

    async def run(self, subscribed: asyncio.Future) -> None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(bus.ROBOTS_CHANNEL)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    if not subscribed.done():
                        subscribed.set_result(None)
                        outage.ok(log)
                elif message["type"] == "message":
                    await self.deliver(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outage.failed(exc, log)  # robots reconnect with back-off: one line per outage, not per attempt
            if not subscribed.done():
                subscribed.set_exception(exc)
            if self.task is asyncio.current_task():
                sockets = [s for group in self.sockets.values() for s in group]
                self.sockets, self.task, self.subscribed = {}, None, None
                for socket in sockets:  # they reconnect, and read the state afresh
                    await socket.close(CLOSE_UNAVAILABLE)
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def deliver(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            robot_id = int(message["robot"])
        except (ValueError, KeyError, TypeError):
            log.error("dropped a malformed robot message: %r", raw[:200])
            return
        for socket in list(self.sockets.get(robot_id, ())):
            try:
                await socket.hear(message)
            except Exception:
                log.exception("closing robot %s's socket, which could not take a message", robot_id)
                self.leave(socket)
                try:
                    await socket.close(CLOSE_UNAVAILABLE)
                except Exception:  # it is gone already: nothing to tell it, and the others still get theirs
                    pass


class RobotConsumer(AsyncJsonWebsocketConsumer):
    robot_id: int | None = None
    token_key: str | None = None
    joined = False
    closed = False  # by us: nothing more may be sent (a delivery, the expiry timer and the cap may each close it)

    async def close(self, code=None, reason=None):
        if self.closed:
            return
        self.closed = True
        if self.robot_id is not None:
            RobotHub.current().leave(self)
        await super().close(code=code, reason=reason)

    async def connect(self):
        headers = dict(self.scope.get("headers", ()))
        presented = headers.get(b"authorization", b"").decode("latin-1")
        if presented:
            if not presented.startswith("Bearer ") or not await self._authenticate(presented[len("Bearer "):]):
                await self.close(CLOSE_UNAUTHENTICATED)  # before accept: the handshake is refused
                return
            await self.accept()
            await self._start()
            return
        await self.accept()
        self.auth_timer = asyncio.get_running_loop().call_later(AUTH_SECONDS, self._auth_timeout)

    def _auth_timeout(self):
        if self.robot_id is None:
            asyncio.ensure_future(self.close(CLOSE_UNAUTHENTICATED))

    async def _authenticate(self, token: str) -> bool:
        found = await database_sync_to_async(credentials.authenticate)(token.strip())
        if found is None:
            return False
        self.robot_id, self.token_key, self.robot, self.token = found.robot_id, found.key, found.robot, found
        if found.expires_at is not None:
            left = (found.expires_at - timezone.now()).total_seconds()
            self.expiry_timer = asyncio.get_running_loop().call_later(
                max(0.0, left), lambda: asyncio.ensure_future(self._refuse("expired")))
        return True

    async def _refuse(self, event: str) -> None:
        """The token no longer opens this socket: say why, and close it."""
        if self.closed:
            return
        await self.send_json({"event": event})
        await self.close(CLOSE_UNAUTHENTICATED)

    async def _start(self):
        try:
            await RobotHub.current().join(self)
        except Exception:
            await self.close(CLOSE_UNAVAILABLE)
            return
        self.joined = True
        metrics.socket_opened("robot")
        await self._send_assignment()

    async def receive_json(self, content, **kwargs):
        if self.robot_id is not None:
            return  # nothing else is read from a robot here: it reports over HTTP
        if not isinstance(content, dict) or content.get("type") != "auth" or not isinstance(content.get("token"), str):
            await self.close(CLOSE_UNAUTHENTICATED)
            return
        self.auth_timer.cancel()
        if not await self._authenticate(content["token"]):
            await self.close(CLOSE_UNAUTHENTICATED)
            return
        await self._start()

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)
        except ValueError:  # not JSON
            await self.close(CLOSE_UNAUTHENTICATED if self.robot_id is None else 1003)

    async def hear(self, message: dict) -> None:
        if self.closed:
            return
        if message.get("event") == "revoked":
            if message.get("token") == self.token_key:
                await self._refuse("revoked")
            return
        await self._send_assignment()

    def _assignment(self) -> dict | None:
        """The robot's assignment, or None if its token no longer opens the socket (revoked, expired, the robot
        retired)."""
        if not credentials.still_active(self.token.pk):
            return None
        return assignment.of(self.robot)

    async def _send_assignment(self):
        data = await database_sync_to_async(self._assignment)()
        if self.closed:  # closed while the assignment was read (its expiry, a newer socket of the robot)
            return
        if data is None:
            await self._refuse("revoked")
            return
        await self.send_json({"event": "assignment", "data": data})

    async def disconnect(self, code):
        if getattr(self, "expiry_timer", None) is not None:
            self.expiry_timer.cancel()
        if self.robot_id is not None:
            RobotHub.current().leave(self)
        if self.joined:
            self.joined = False
            metrics.socket_closed("robot")
