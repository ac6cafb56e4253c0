"""The product's ASGI application plus one bench-only socket, /ws/bare/, for bench/ws_fanout.py's baseline: it
joins the group "bench-bare" and forwards each message the moment it arrives (no coalescing, no batching)."""
from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from sopweb.asgi import django_asgi_app  # sets Django up first
import fleet.routing  # noqa: E402


class BareConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add("bench-bare", self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard("bench-bare", self.channel_name)

    async def bare_event(self, message):
        await self.send_json({"events": [{"event": message["event"], "data": message["data"]}]})


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(
        fleet.routing.websocket_urlpatterns + [path("ws/bare/", BareConsumer.as_asgi())]))),
})
