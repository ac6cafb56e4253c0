"""Per-robot request rate: a fixed window counter in Redis, shared by every web process (core.ratelimit)."""
from __future__ import annotations

from django.conf import settings

from core import ratelimit
from gateway.errors import ApiError


def count_request(robot_id: int) -> None:
    """Count one request of the robot; ApiError 429 (with Retry-After) past API_RATE_LIMIT requests per
    API_RATE_WINDOW seconds."""
    try:
        ratelimit.hit("robot", robot_id, limit=settings.API_RATE_LIMIT, window=settings.API_RATE_WINDOW,
                      what="requests")
    except ratelimit.RateLimited as exc:
        raise ApiError(429, "rate_limited", str(exc), {"Retry-After": str(exc.retry_after)}) from None
