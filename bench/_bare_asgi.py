"""The product's ASGI application plus one bench-only socket, /ws/bare/, for bench/ws_fanout.py's baseline: it
joins the channel-layer group "bench-bare" and forwards each message the moment it arrives (no coalescing, no
batching). The product has no channel layer; this bench-only one is Channels' usual Redis layer, under the alias
"bench" so that the product's sockets do not get one."""
from django.conf import settings
from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from sopweb.asgi import django_asgi_app  # sets Django up first
import fleet.routing  # noqa: E402


LAYER = "bench"
# Read socket timeout above the layer's 5 s blocking pop, and a pool for every socket joining at once.
settings.CHANNEL_LAYERS = {LAYER: {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    "CONFIG": {"hosts": [{"address": settings.REDIS_URL, "socket_timeout": 30, "max_connections": 1000}],
               "capacity": 1000, "expiry": 30},
}}


class BareConsumer(AsyncJsonWebsocketConsumer):
    channel_layer_alias = LAYER

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
