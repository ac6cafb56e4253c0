from channels.generic.websocket import AsyncJsonWebsocketConsumer

from fleet.events import FLEET_GROUP

# Close codes in the application range (4000-4999), mirroring HTTP's 401 and 403.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Pushes fleet deltas to a dashboard. It never writes: commands go through POST views."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await user.ahas_perm("fleet.view_robot"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)

    async def fleet_event(self, message):
        await self.send_json({"event": message["event"], "data": message["data"]})
