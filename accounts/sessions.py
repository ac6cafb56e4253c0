"""Ending people's sessions, and telling every web process so that their dashboard sockets close at once.

Sessions live in PostgreSQL (Django's database engine). A logout ends one session; deactivating a user or changing
their password ends all of theirs. After the change commits, one PUBLISH on `bus.SESSIONS_CHANNEL` reaches every
web process's LiveHub (fleet.consumers), which closes the matching sockets with 4401. A socket also re-checks its
session and permission every WS_PERMISSION_RECHECK_SECONDS (`socket_verdict`), which catches what no message
announces: a session that expired (idle), a permission removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user, get_user_model
from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone

from core import bus

log = logging.getLogger(__name__)

UNAUTHENTICATED = "unauthenticated"
FORBIDDEN = "forbidden"


def session_tag(session_key: str) -> str:
    """What travels on Redis instead of the session key (a bearer secret)."""
    return hashlib.sha256(f"sopweb-session:{session_key}".encode()).hexdigest()[:32]


def announce_session_end(*, session: str | None = None, user: int | None = None) -> None:
    """After commit, tell every web process that this session (key) or every session of this user (id) ended. A
    failure is logged, not raised: the sockets' periodic re-check closes them anyway."""
    if session is None and user is None:
        raise ValueError("announce_session_end needs a session key or a user id")
    message = json.dumps({"session": session_tag(session)} if session is not None else {"user": user})

    def publish():
        # Redis away: logged once per outage (core.outages); the sockets close at their next re-check instead.
        bus.degrade(bus.client().publish, bus.SESSIONS_CHANNEL, message)

    transaction.on_commit(publish)


def end_sessions(user) -> int:
    """Delete every live session of `user` and announce it; returns how many there were. Sessions are found by
    decoding the live ones (those not expired): people's sessions are few, and this runs only when a user is
    deactivated."""
    if settings.SESSION_ENGINE != "django.contrib.sessions.backends.db":
        raise RuntimeError(f"end_sessions needs database sessions, not {settings.SESSION_ENGINE}")
    mine = [session.pk for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
            if session.get_decoded().get(SESSION_KEY) == str(user.pk)]
    Session.objects.filter(pk__in=mine).delete()
    announce_session_end(user=user.pk)
    return len(mine)


def session_user(session_key: str | None):
    """The user a session key logs in now, exactly as a request with it would see: AnonymousUser if the session
    expired or was deleted, the user is inactive, or their password changed since (Django's session hash)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(SimpleNamespace(session=store))


def socket_verdict(session_key: str | None, user_id: int, permission: str) -> str | None:
    """None if the socket may stay open, else UNAUTHENTICATED or FORBIDDEN. A socket opened without a session (an
    in-process test's scope) is judged by its user alone."""
    if session_key is None:
        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    else:
        user = session_user(session_key)
    if user is None or not user.is_authenticated or user.pk != user_id:
        return UNAUTHENTICATED
    return None if user.has_perm(permission) else FORBIDDEN
