"""Per-robot request rate: a fixed window counter in Redis, shared by every web process."""
from __future__ import annotations

import time

from django.conf import settings

from core import bus
from gateway.errors import ApiError

_COUNT = """local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count"""
_script = None


def _counter():
    """INCR with the window's expiry set by the first request of the window: one round trip (EVALSHA), atomic."""
    global _script
    if _script is None:
        _script = bus.client().register_script(_COUNT)
    return _script


def count_request(robot_id: int) -> None:
    """Count one request of the robot; ApiError 429 (with Retry-After) past API_RATE_LIMIT requests per
    API_RATE_WINDOW seconds."""
    window_seconds = settings.API_RATE_WINDOW
    now = time.time()
    window = int(now // window_seconds)
    # Redis away: the limit is not enforced until it answers (a robot's uploads must reach PostgreSQL, the record).
    count = bus.degrade(_counter(), keys=[bus.rate_key(robot_id, window)], args=[int(window_seconds) + 1],
                        default=0)
    if count > settings.API_RATE_LIMIT:
        retry = max(1, int((window + 1) * window_seconds - now + 0.999))
        raise ApiError(429, "rate_limited", f"more than {settings.API_RATE_LIMIT} requests in "
                                            f"{window_seconds:g} s; retry in {retry} s", {"Retry-After": str(retry)})
