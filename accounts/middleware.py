"""Idle sessions end: a session unused for SESSION_IDLE_TIMEOUT seconds is logged out."""
from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout

LAST_SEEN = "accounts.last_seen"  # when this session was last used (epoch seconds, refreshed at most every minute)


def refresh_after(timeout: float) -> float:
    """A session's expiry moves forward at most this often: one session write a minute per busy user, not one per
    request; the session then ends between timeout - refresh and timeout after its last use."""
    return min(60.0, timeout / 10)


class IdleTimeoutMiddleware:
    """Sliding expiry. Each use of a logged-in session moves its expiry (the session row's `expire_date`, and the
    cookie's) SESSION_IDLE_TIMEOUT ahead, so an idle session expires in the database by itself; sockets re-check
    the row (accounts.sessions). A session whose last use is older than the timeout is logged out here, too.

    The robot API (/api/v1/) is served by a handler without sessions (sopweb/asgi.py) and never reaches this."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = request.session
        if SESSION_KEY in session:
            now = time.time()
            timeout = settings.SESSION_IDLE_TIMEOUT
            last_seen = session.get(LAST_SEEN)
            if last_seen is not None and now - last_seen > timeout:
                logout(request)  # flushes the session and announces it (its sockets close)
            elif last_seen is None or now - last_seen >= refresh_after(timeout):
                session[LAST_SEEN] = now
                session.set_expiry(timeout)
        return self.get_response(request)
