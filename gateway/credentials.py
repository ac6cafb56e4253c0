"""Issuing, rotating, revoking and checking robots' tokens. Every act but checking is audited.

A token is `sopr_<key>_<secret>`: the key (public, 12 characters) finds the row, the secret (43 characters, 256
random bits) is compared by its SHA-256 in constant time. A plain hash suffices: the secret is random and long,
so nothing is gained by a slow password hash, and each API request checks one.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from core import bus
from core.audit import IllegalTransition
from core.models import AuditEvent
from fleet.models import Robot, Task
from gateway.models import RobotToken

PREFIX = "sopr_"
KEY = re.compile(r"[0-9a-f]{12}")  # the public part issue() makes: anything else is not looked up
LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used_at is written at most this often per token


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(robot: Robot, actor, expires_at=None, reason: str = "") -> tuple[RobotToken, str]:
    """A new token for the robot. Returns the row and the token, which is never shown again."""
    if robot.retired:
        raise IllegalTransition(f"robot {robot.name} was removed from the fleet")
    if robot.in_process:
        raise IllegalTransition(f"robot {robot.name} runs in sopweb's own workers and takes no token")
    key, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with transaction.atomic():
        row = RobotToken.objects.create(robot=robot, key=key, secret_sha256=_digest(secret), created_by=actor
                                        if actor is not None and actor.is_authenticated else None,
                                        expires_at=expires_at)
        AuditEvent.record(actor, "robot.token_issue", robot, reason=reason,
                          details={"key": key, "expires_at": expires_at.isoformat() if expires_at else None})
    return row, f"{PREFIX}{key}_{secret}"


def revoke(token: RobotToken, actor, reason: str = "") -> None:
    """The token stops working at its robot's next request; its open socket is closed."""
    with transaction.atomic():
        locked = RobotToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is not None:
            raise IllegalTransition(f"token {locked.key} is revoked already")
        locked.revoked_at = timezone.now()
        locked.revoked_by = actor if actor is not None and actor.is_authenticated else None
        locked.save(update_fields=["revoked_at", "revoked_by"])
        AuditEvent.record(actor, "robot.token_revoke", locked.robot, reason=reason, details={"key": locked.key})
        robot_id, key = locked.robot_id, locked.key
        transaction.on_commit(lambda: bus.degrade(bus.tell_robot, robot_id, {"event": "revoked", "token": key}))
    token.revoked_at = locked.revoked_at


def rotate(robot: Robot, actor, expires_at=None, reason: str = "") -> tuple[RobotToken, str]:
    """Revoke every active token of the robot and issue a new one, in one transaction."""
    with transaction.atomic():
        for token in RobotToken.objects.filter(robot=robot, revoked_at=None):
            revoke(token, actor, reason=reason or "rotated")
        return issue(robot, actor, expires_at=expires_at, reason=reason or "rotated")


def authenticate(presented: str) -> RobotToken | None:
    """The active token that `presented` is, with its robot; None for anything else (malformed, unknown, wrong
    secret, revoked, expired, or a robot removed from the fleet)."""
    if not presented.startswith(PREFIX):
        return None
    key, _, secret = presented[len(PREFIX):].partition("_")
    if not KEY.fullmatch(key) or not secret or len(presented) > 200:
        return None
    token = _token_with_robot(key)
    if token is None or not hmac.compare_digest(token.secret_sha256, _digest(secret)):
        return None
    now = timezone.now()
    if token.state(now) != "active" or token.robot.retired:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        RobotToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def still_active(token_id: int) -> bool:
    """Whether the token still opens the API: not revoked, not expired, its robot not retired (one query)."""
    return (RobotToken.objects.filter(pk=token_id, revoked_at=None, robot__retired=False)
            .filter(Q(expires_at=None) | Q(expires_at__gt=timezone.now())).exists())


_TOKEN_FIELDS = ("id", "robot_id", "key", "secret_sha256", "created_at", "expires_at", "last_used_at", "revoked_at")
_ROBOT_FIELDS = ("id", "name", "kind", "status", "policy_version_id", "enabled", "retired", "last_heartbeat",
                 "created_at")


def _token_with_robot(key: str) -> RobotToken | None:
    """The token and its robot in one prepared statement: every API request makes this lookup, and compiling
    the ORM query cost more than running it (bench/api_ingest.py)."""
    columns = [f"t.{name}" for name in _TOKEN_FIELDS] + [f"r.{name}" for name in _ROBOT_FIELDS]
    through, task = Robot.tasks.through._meta.db_table, Task._meta.db_table
    enabled_tasks = (f"ARRAY(SELECT k.env_name FROM {through} m JOIN {task} k ON k.id = m.task_id "
                     f"WHERE m.robot_id = r.id AND k.enabled)")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)}, {enabled_tasks} FROM {RobotToken._meta.db_table} t "
                       f"JOIN {Robot._meta.db_table} r ON r.id = t.robot_id WHERE t.key = %s", [key])
        row = cursor.fetchone()
    if row is None:
        return None
    token = RobotToken.from_db(connection.alias, _TOKEN_FIELDS, row[:len(_TOKEN_FIELDS)])
    token.robot = Robot.from_db(connection.alias, _ROBOT_FIELDS, row[len(_TOKEN_FIELDS):-1])
    token.robot.enabled_task_names = frozenset(row[-1])  # what uploads check their task against
    return token
