"""Deactivating and reactivating people. Users are never deleted: their audit trail, flags and labels stay theirs."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.sessions import end_sessions
from core.audit import IllegalTransition
from core.models import AuditEvent


def _check_actor(user, actor, verb: str) -> None:
    if actor is not None:
        if actor.pk == user.pk:
            raise IllegalTransition(f"you cannot {verb} your own account")
        if user.is_superuser and not actor.is_superuser:
            raise IllegalTransition(f"only a superuser may {verb} the superuser {user.get_username()}")


def deactivate(user, actor, reason: str = ""):
    """Set is_active=False, end every session of the user (their dashboard sockets close at once) and audit it, in
    one transaction. `actor` None is the system (a command)."""
    _check_actor(user, actor, "deactivate")
    with transaction.atomic():
        locked = get_user_model().objects.select_for_update(no_key=True).get(pk=user.pk)
        if not locked.is_active:
            raise IllegalTransition(f"{locked.get_username()} is already deactivated")
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        ended = end_sessions(locked)
        AuditEvent.record(actor, "user.deactivate", locked, reason=reason, details={"sessions_ended": ended})
    return locked


def reactivate(user, actor, reason: str = ""):
    _check_actor(user, actor, "reactivate")
    with transaction.atomic():
        locked = get_user_model().objects.select_for_update(no_key=True).get(pk=user.pk)
        if locked.is_active:
            raise IllegalTransition(f"{locked.get_username()} is already active")
        locked.is_active = True
        locked.save(update_fields=["is_active"])
        AuditEvent.record(actor, "user.reactivate", locked, reason=reason)
    return locked
