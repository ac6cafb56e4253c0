"""The product's ASGI application plus two bench-only sockets for bench/ws_fanout.py, each forwarding every message
the moment it arrives (no coalescing, no batching):
- /ws/bare/ joins the channel-layer group "bench-bare": the baseline the issue names (a bare group_send). The
  product has no channel layer; this bench-only one is Channels' usual Redis layer, under the alias "bench" so
  that the product's sockets do not get one;
- /ws/bare-pubsub/ holds its own Redis subscription to BARE_CHANNEL: the product's transport without the product
  (no hub, no bucket), a like-for-like reference."""
import asyncio

import redis.asyncio
from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.urls import path

import fleet.routing  # noqa: E402
from sopweb.asgi import django_asgi_app  # sets Django up first

LAYER = "bench"
# Read socket timeout above the layer's 5 s blocking pop, and a pool for every socket joining at once.
settings.CHANNEL_LAYERS = {LAYER: {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    "CONFIG": {"hosts": [{"address": settings.REDIS_URL, "socket_timeout": 30, "max_connections": 1000}],
               "capacity": 1000, "expiry": 30},
}}


BARE_CHANNEL = "bench-bare-pubsub"


class BarePubSubConsumer(AsyncJsonWebsocketConsumer):
    channel_layer_alias = None

    async def connect(self):
        self.redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(BARE_CHANNEL)
        await self.pubsub.get_message(timeout=5)  # the confirmation: subscribed before the handshake ends
        await self.accept()
        self.forwarder = asyncio.create_task(self.forward())

    async def forward(self):
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                await self.send(text_data=message["data"].decode())

    async def disconnect(self, code):
        if hasattr(self, "forwarder"):
            self.forwarder.cancel()
        await self.pubsub.aclose()
        await self.redis.aclose()


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
        fleet.routing.websocket_urlpatterns + [path("ws/bare/", BareConsumer.as_asgi()),
                                               path("ws/bare-pubsub/", BarePubSubConsumer.as_asgi())]))),
})
