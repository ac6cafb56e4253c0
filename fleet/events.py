"""The one way live events leave the server: a small JSON delta to a channel group, sent after commit."""
from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

FLEET_GROUP = "fleet"


def broadcast(event: str, data: dict, group: str = FLEET_GROUP) -> None:
    """Send `{"event": event, "data": data}` to every socket in `group` (consumers forward it as is)."""
    async_to_sync(get_channel_layer().group_send)(group, {"type": "fleet.event", "event": event, "data": data})


def broadcast_on_commit(event: str, data: dict, group: str = FLEET_GROUP) -> None:
    """Broadcast once the current transaction commits, so no browser hears of a change that rolled back."""
    transaction.on_commit(lambda: broadcast(event, data, group))
