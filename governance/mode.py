"""The rollout mode (manual / rules / continuous) and the deployment freeze, as supervisors set them at run time.

The truth is one row, governance.models.RolloutControl, written under the rollout lock with an audit row; until a
supervisor first changes something there is no row and the mode is ROLLOUT_MODE from the environment (which so
only seeds the first value: a restarted process keeps what a supervisor chose).

Two ways to read it:
- `current()`: for hot paths (every publication, every episode's evaluation claim, every page's header). A copy
  kept in this process for MODE_CACHE_SECONDS, dropped at once here when this process changes it. Another process
  may act on a value that old; no decision depends on that, because
- `fresh()`: under the rollout lock, in every decision that deploys, promotes or starts a canary, and in every
  rule before it acts. Changes take the same lock, so once a freeze commits nothing deploys after it, in any
  process.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from core.audit import IllegalTransition
from core.events import broadcast_on_commit
from core.locks import rollout_lock
from governance.models import RolloutControl

# Long enough that a busy process reads the row about once per period, short enough that a page loaded just
# after a change, by another web process, is seldom stale (the Rollouts page itself reads fresh()).
MODE_CACHE_SECONDS = 2.0
MODES = RolloutControl.Mode


@dataclass(frozen=True)
class Mode:
    """What the row says (or the environment, while there is none)."""

    mode: str
    frozen: bool = False
    frozen_at: datetime | None = None
    frozen_by: str = ""
    freeze_reason: str = ""
    changed_at: datetime | None = None
    changed_by: str = ""
    chosen: bool = False  # False: nobody has set it yet, it is ROLLOUT_MODE from the environment

    @property
    def deploys_continuously(self) -> bool:
        return self.mode == MODES.CONTINUOUS and not self.frozen

    @classmethod
    def of(cls, row: RolloutControl | None) -> Mode:
        if row is None:
            return cls(mode=settings.ROLLOUT_MODE)
        name = (lambda user: user.get_username() if user is not None else "")  # noqa: E731
        return cls(mode=row.mode, frozen=row.frozen, frozen_at=row.frozen_at, frozen_by=name(row.frozen_by),
                   freeze_reason=row.freeze_reason, changed_at=row.changed_at, changed_by=name(row.changed_by),
                   chosen=True)


_cache: dict = {}  # {"row": RolloutControl | None, "until": monotonic deadline}
_cache_lock = threading.Lock()


def fresh() -> Mode:
    """The row as the database has it now (take the rollout lock first where a decision depends on it)."""
    row = RolloutControl.objects.select_related("frozen_by", "changed_by").filter(pk=RolloutControl.ROW).first()
    return Mode.of(row)


def current() -> Mode:
    """The mode, at most MODE_CACHE_SECONDS old: no query most of the time. While no row exists the mode follows
    settings.ROLLOUT_MODE as it is now (only the row's absence is cached)."""
    now = time.monotonic()
    with _cache_lock:
        if _cache and _cache["until"] > now:
            return Mode.of(_cache["row"])
    row = RolloutControl.objects.select_related("frozen_by", "changed_by").filter(pk=RolloutControl.ROW).first()
    with _cache_lock:
        _cache.update(row=row, until=now + MODE_CACHE_SECONDS)
    return Mode.of(row)


def forget() -> None:
    """Drop this process's copy: the next current() reads the row."""
    with _cache_lock:
        _cache.clear()


def require_unfrozen(what: str) -> None:
    """Under the rollout lock: refuse `what` while deployments are frozen, saying who froze them and why."""
    state = fresh()
    if state.frozen:
        raise IllegalTransition(
            f"cannot {what}: deployments are frozen (by {state.frozen_by or 'system'} at "
            f"{state.frozen_at:%Y-%m-%d %H:%M} UTC{': ' + state.freeze_reason if state.freeze_reason else ''}). "
            "Unfreeze them on the Rollouts page first; roll backs stay possible while frozen")


def _changed(verb: str, actor, reason: str, state: Mode) -> None:
    forget()
    transaction.on_commit(forget)  # a read between the change and its commit would have cached the old row
    who = actor.get_username() if actor is not None else "system"
    words = {"set_mode": f"rollout mode set to {state.mode}", "freeze": "deployments frozen",
             "unfreeze": "deployments unfrozen"}[verb]
    broadcast_on_commit("rollout.mode", {"mode": state.mode, "frozen": state.frozen})
    broadcast_on_commit("alert", {"message": f"{who}: {words}" + (f" — {reason}" if reason else ""),
                                  "level": "warning" if verb == "freeze" else "info"})


def set_mode(mode: str, actor, reason: str = "") -> Mode:
    """A supervisor switches the mode; effective for every decision from its commit."""
    if mode not in MODES.values:
        raise IllegalTransition(f"unknown rollout mode {mode!r}: expected manual, rules or continuous")
    with transaction.atomic():
        rollout_lock()
        row = RolloutControl.locked()
        if row.mode == mode:
            raise IllegalTransition(f"the rollout mode is {mode} already")
        row.set_mode(mode, actor, reason=reason)
        state = fresh()
        _changed("set_mode", actor, reason, state)
    return state


def freeze(actor, reason: str = "", if_not_frozen: bool = False) -> Mode:
    """Nothing deploys, promotes or starts a canary or an evaluation episode until someone unfreezes; a roll back
    (of a canary, of the deployed version, or to a superseded version) stays possible: it is how a fleet gets out
    of trouble, and a freeze is most likely during trouble. Already frozen: IllegalTransition, or nothing at all
    with `if_not_frozen`."""
    with transaction.atomic():
        rollout_lock()
        row = RolloutControl.locked()
        if row.frozen and if_not_frozen:
            return fresh()
        if row.frozen:
            raise IllegalTransition(f"deployments are frozen already (by {fresh().frozen_by or 'system'})")
        row.freeze(actor, reason=reason)
        state = fresh()
        _changed("freeze", actor, reason, state)
    return state


def unfreeze(actor, reason: str = "") -> Mode:
    with transaction.atomic():
        rollout_lock()
        row = RolloutControl.locked()
        if not row.frozen:
            raise IllegalTransition("deployments are not frozen")
        row.unfreeze(actor, reason=reason)
        state = fresh()
        _changed("unfreeze", actor, reason, state)
    return state
