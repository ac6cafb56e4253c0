"""Fixed-window rate limits in Redis, shared by every web process: robots' API requests (gateway.limits) and
people's requests for background work (replay renders, exports: review.jobs, the audit CSV).

One counter per (scope, who, window): INCR, with the window's expiry set by its first hit, in one atomic round trip
(EVALSHA). A fixed window lets a client spend up to twice the limit across a window's edge; that is the price of
one key and one command per hit, and the limits here bound abuse, not fairness.
"""
from __future__ import annotations

import time

from core import bus

_COUNT = """local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count"""
_script = None


class RateLimited(Exception):
    """Past the limit: nothing was done; `retry_after` is the number of seconds until the window ends."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def _counter():
    global _script
    if _script is None:
        _script = bus.client().register_script(_COUNT)
    return _script


def hit(scope: str, who: int | str, *, limit: int, window: float, what: str) -> None:
    """Count one `what` (e.g. "replay renders") of `who` in `scope`; RateLimited past `limit` per `window` seconds.
    A refused hit counts too, so a client that keeps asking stays refused until the window ends."""
    now = time.time()
    number = int(now // window)
    # Redis away: no limit is enforced until it answers (a robot's uploads must still reach PostgreSQL, the record).
    count = bus.degrade(_counter(), keys=[bus.rate_limit_key(scope, who, number)], args=[int(window) + 1],
                        default=0)
    if count > limit:
        retry = max(1, int((number + 1) * window - now + 0.999))
        raise RateLimited(f"more than {limit} {what} in {window:g} s; retry in {retry} s", retry)
