import asyncio

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from fleet.events import FLEET_GROUP

# Close codes in the application range (4000-4999), mirroring HTTP's 401 and 403.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403

# Events that only say "the latest value is ...": within one batch, a newer one replaces an older one for the
# same key instead of being sent too.
LATEST_ONLY = {"robot.progress": "robot"}


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Pushes fleet deltas to a dashboard. It never writes: commands go through POST views.

    Deltas are coalesced: the first after a quiet interval goes out at once, later ones wait until
    DASHBOARD_PUSH_INTERVAL has passed since the last message and then leave together, as {"events": [...]}.
    So a quiet fleet costs no latency and a busy one cannot flood a browser.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await user.ahas_perm("fleet.view_robot"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.pending: list[dict] = []
        self.latest: dict[tuple, int] = {}  # (event, key) -> index in pending
        self.last_sent = float("-inf")
        self.flush_task = None
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)
        if getattr(self, "flush_task", None):
            self.flush_task.cancel()

    async def fleet_event(self, message):
        item = {"event": message["event"], "data": message["data"]}
        key_field = LATEST_ONLY.get(item["event"])
        key = (item["event"], item["data"].get(key_field)) if key_field else None
        if key in self.latest:
            self.pending[self.latest[key]] = item
        else:
            if key:
                self.latest[key] = len(self.pending)
            self.pending.append(item)
        if self.flush_task is not None:
            return  # a flush is already due; this event rides along
        wait = self.last_sent + settings.DASHBOARD_PUSH_INTERVAL - asyncio.get_running_loop().time()
        if wait <= 0:
            await self.flush()
        else:
            self.flush_task = asyncio.create_task(self.flush_after(wait))

    async def flush_after(self, wait: float):
        await asyncio.sleep(wait)
        self.flush_task = None
        await self.flush()

    async def flush(self):
        batch, self.pending, self.latest = self.pending, [], {}
        if batch:
            self.last_sent = asyncio.get_running_loop().time()
            await self.send_json({"events": batch})
