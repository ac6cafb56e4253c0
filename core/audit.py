"""State changes with an audit trail: the one way a status moves (Robot, PolicyVersion, Rollout, flags, ...).

A state change locks its row, refuses an illegal move (raising IllegalTransition and changing nothing) and writes
an AuditEvent, in one transaction.
"""
from __future__ import annotations

from django.db import models, transaction

from core.models import AuditEvent


class IllegalTransition(Exception):
    """The object's current state does not allow this change; nothing was changed."""


def apply_transition(obj, *, verb: str, field: str, allowed_from, to: str, actor=None, reason: str = "",
                     details: dict | None = None, condition: models.Q | None = None, **updates):
    """Move obj.<field> from one of `allowed_from` to `to`, with `updates`, under a row lock, and audit it.

    `condition`, if given, must also hold for the locked row (e.g. "its heartbeat is still stale").

    The row lock makes concurrent callers queue: the first moves the state, the next one finds the new state
    and gets IllegalTransition instead of a second, silent transition. It is FOR NO KEY UPDATE: it must not
    conflict with the FOR KEY SHARE locks that foreign-key checks take (an episode being ingested for this robot
    or version), or ingestion and a deployment deadlock on each other's rows.
    """
    model = type(obj)
    with transaction.atomic():
        locked = model.objects.select_for_update(no_key=True).get(pk=obj.pk)
        current = getattr(locked, field)
        if current not in allowed_from:
            raise IllegalTransition(
                f"cannot {verb.split('.')[-1].replace('_', ' ')} {model._meta.verbose_name} {locked}: "
                f"it is {current}, and this needs {' or '.join(sorted(map(str, allowed_from)))}"
            )
        if condition is not None and not model.objects.filter(condition, pk=obj.pk).exists():
            raise IllegalTransition(
                f"cannot {verb.split('.')[-1].replace('_', ' ')} {locked}: {condition} no longer holds"
            )
        changes = {field: to, **updates}
        for name, value in changes.items():
            setattr(locked, name, value)
        locked.save(update_fields=list(changes))
        event = AuditEvent.record(
            actor, verb, locked, reason=reason, details={"from": current, "to": to, **(details or {})}
        )
    for name in changes:
        setattr(obj, name, getattr(locked, name))
    return event
