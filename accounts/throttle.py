"""django-axes hooks: which address a login comes from, and the page a locked-out login gets."""
from __future__ import annotations

import math

from django.conf import settings
from django.shortcuts import render


def client_address(request) -> str | None:
    """The client's address. uvicorn has already replaced the peer's address with the one in X-Forwarded-For when,
    and only when, the peer is a trusted proxy (FORWARDED_ALLOW_IPS, sopweb/web.py), so a client cannot choose the
    address its failures count against."""
    return request.META.get("REMOTE_ADDR")


def lockout_minutes() -> int:
    return max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60))


def lockout_response(request, original_response=None, credentials=None):
    """429 with the site's page: the login is locked, try again in N minutes (each attempt meanwhile starts the wait
    again). It does not say whether the account or the address was locked, nor whether the account exists."""
    return render(request, "accounts/locked.html", {"minutes": lockout_minutes(),
                                                    "failure_limit": settings.AXES_FAILURE_LIMIT}, status=429)
