"""Rollout governance's own records: the rollout mode and freeze supervisors set, evaluation plans run by the fleet,
and alerts that outlive a page load.

The lifecycle of a version itself lives on learner.models.PolicyVersion (its TRANSITIONS and advance()); the
decisions that move it, with their side effects on robots and rollouts, are in governance/decisions.py.
"""
from __future__ import annotations

import django.dispatch
from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core.audit import apply_transition
from core.models import AuditEvent


class RolloutControl(models.Model):
    """The rollout mode and the deployment freeze as supervisors set them at run time: one row (pk 1), kept across
    restarts. It is written the first time a supervisor changes either; until then the mode is ROLLOUT_MODE from
    the environment and nothing is frozen. Read it through governance.mode (cached), never directly on a hot path.
    """

    class Mode(models.TextChoices):
        MANUAL = "manual", "manual"
        RULES = "rules", "rules"
        CONTINUOUS = "continuous", "continuous"

    ROW = 1
    mode = models.CharField(max_length=16, choices=Mode.choices)
    frozen = models.BooleanField(default=False, help_text="Nothing deploys, promotes or starts a canary or an "
                                                          "evaluation; roll backs stay possible.")
    frozen_at = models.DateTimeField(null=True, blank=True)
    frozen_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    freeze_reason = models.TextField(blank=True)
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        verbose_name = "rollout control"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="one_rollout_control_row")]

    def __str__(self) -> str:
        return f"rollout mode {self.mode}" + (" (frozen)" if self.frozen else "")

    @classmethod
    def locked(cls) -> RolloutControl:
        """The row, locked until the transaction ends; created from ROLLOUT_MODE the first time it is needed."""
        row, _ = cls.objects.select_for_update(no_key=True).get_or_create(
            pk=cls.ROW, defaults={"mode": settings.ROLLOUT_MODE})
        return row

    def set_mode(self, mode: str, actor, reason: str = "") -> AuditEvent:
        others = {m for m in self.Mode.values if m != mode}
        if mode not in self.Mode.values:
            raise ValueError(f"unknown rollout mode {mode!r}")
        return apply_transition(self, verb="rollouts.set_mode", field="mode", to=mode, allowed_from=others,
                                actor=actor, reason=reason, changed_at=timezone.now(), changed_by=actor)

    def freeze(self, actor, reason: str = "") -> AuditEvent:
        return apply_transition(self, verb="rollouts.freeze", field="frozen", to=True, allowed_from={False},
                                actor=actor, reason=reason, frozen_at=timezone.now(), frozen_by=actor,
                                freeze_reason=reason, changed_at=timezone.now(), changed_by=actor)

    def unfreeze(self, actor, reason: str = "") -> AuditEvent:
        return apply_transition(self, verb="rollouts.unfreeze", field="frozen", to=False, allowed_from={True},
                                actor=actor, reason=reason, frozen_at=None, frozen_by=None, freeze_reason="",
                                changed_at=timezone.now(), changed_by=actor)


class Rollout(models.Model):
    """A decision to run a policy version on a canary subset of robots or on the whole fleet."""

    class Stage(models.TextChoices):
        CANARY = "canary", "canary"
        FLEET = "fleet", "whole fleet"

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        PROMOTED = "promoted", "promoted"
        ROLLED_BACK = "rolled_back", "rolled back"
        SUPERSEDED = "superseded", "superseded"

    version = models.ForeignKey("learner.PolicyVersion", on_delete=models.PROTECT, related_name="rollouts")
    stage = models.CharField(max_length=8, choices=Stage.choices)
    robots = models.ManyToManyField("fleet.Robot", blank=True, related_name="rollouts")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="requested_rollouts")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="approved_rollouts")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "fleet_rollout"  # moved from fleet with its tables (governance/migrations/0002)
        ordering = ["-created_at"]
        permissions = [("approve_rollout", "Can approve, promote, reject and roll back policy versions")]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_stage_display()} rollout of v{self.version.number}"

    def end(self, outcome: str, actor=None, reason: str = "") -> AuditEvent:
        if outcome not in (self.Status.PROMOTED, self.Status.ROLLED_BACK, self.Status.SUPERSEDED):
            raise ValueError(f"a rollout ends promoted, rolled_back or superseded, not {outcome!r}")
        return apply_transition(
            self, verb=f"rollout.{outcome}", field="status", to=outcome, actor=actor, reason=reason,
            allowed_from={self.Status.ACTIVE}, ended_at=timezone.now(),
        )


class Evaluation(models.Model):
    """A candidate's evaluation: fixed held-out seeds on every task the fleet runs, the candidate paired with the
    version deployed when it started (which runs the same seeds unless it already has)."""

    candidate = models.ForeignKey("learner.PolicyVersion", on_delete=models.CASCADE, related_name="evaluations")
    baseline = models.ForeignKey("learner.PolicyVersion", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+", help_text="The deployed version when the evaluation started.")
    tasks = models.ManyToManyField("fleet.Task", related_name="+")
    episodes_per_task = models.PositiveIntegerField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"evaluation of {self.candidate}"

    @property
    def seeds(self) -> range:
        from fleet.sim.envs import EVALUATION_SEED_BASE

        return range(EVALUATION_SEED_BASE, EVALUATION_SEED_BASE + self.episodes_per_task)

    def versions(self) -> list:
        return [v for v in (self.candidate, self.baseline) if v is not None]

    def items(self):
        """Every evaluation episode this evaluation needs, whichever evaluation first asked for it."""
        return EvaluationItem.objects.filter(version__in=self.versions(), task__in=self.tasks.all(),
                                             seed__in=list(self.seeds))

    def progress(self) -> tuple[int, int]:
        """(episodes done, episodes needed)."""
        needed = len(self.versions()) * self.tasks.count() * self.episodes_per_task
        return self.items().filter(episode__isnull=False).count(), needed


class EvaluationItem(models.Model):
    """One evaluation episode to run: a version on a task and a held-out seed. At an episode start a robot claims
    a pending item for one of its tasks and runs it instead of its assigned version's online episode."""

    version = models.ForeignKey("learner.PolicyVersion", on_delete=models.CASCADE, related_name="evaluation_items")
    task = models.ForeignKey("fleet.Task", on_delete=models.CASCADE, related_name="+")
    seed = models.BigIntegerField()
    robot = models.ForeignKey("fleet.Robot", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                              help_text="The robot that claimed it last.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    episode = models.OneToOneField("fleet.Episode", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="evaluation_item")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["version", "task", "seed"], name="one_item_per_version_seed")]
        indexes = [models.Index(fields=["task", "id"], condition=models.Q(episode__isnull=True),
                                name="pending_evaluation_items")]

    def __str__(self) -> str:
        return f"v{self.version.number} on {self.task} seed {self.seed}"


# Sent once an alert's row has committed: kwargs alert, change ("fired" or "resolved"). Outgoing webhooks listen
# (ops/apps.py); governance does not know them.
alert_changed = django.dispatch.Signal()


def _announce(alert: Alert, change: str) -> None:
    """alert_changed to every receiver; one that fails (a broker away) is logged and fails neither the others nor
    whoever raised the alert."""
    import logging

    for receiver, result in alert_changed.send_robust(sender=Alert, alert=alert, change=change):
        if isinstance(result, Exception):
            logging.getLogger(__name__).error("alert %s %s: %s failed: %r", alert.pk, change, receiver, result)


class Alert(models.Model):
    """Something every dashboard must show until a supervisor acknowledges it (e.g. an automatic rollback).
    Sent live as an "alert" event when raised; pages loaded later render the active ones.

    An alert of a rule (ops.rules: a success drop, a silent robot, ...) is an incident: at most one is open per rule
    and subject (a task, a robot, a queue), it fires once, and it resolves itself (resolved_at) when the condition
    clears; a later recurrence is a new incident. Events (an automatic rollback, an unloadable checkpoint) fire once
    and have nothing to resolve."""

    class Kind(models.TextChoices):
        OTHER = "other", "other events (e.g. a checkpoint that cannot be loaded)"
        AUTO_ROLLBACK = "auto_rollback", "canary rolled back automatically"
        SUCCESS_DROP = "success_drop", "autonomous success dropped"
        ROBOT_SILENT = "robot_silent", "robot silent"
        LEARNER_IDLE = "learner_idle", "learner publishes nothing"
        INGEST_REJECTIONS = "ingest_rejections", "episodes rejected"
        QUEUE_BACKLOG = "queue_backlog", "queue backlog"

    EVENT_KINDS = (Kind.OTHER, Kind.AUTO_ROLLBACK)

    class Level(models.TextChoices):
        ERROR = "error", "error"
        WARNING = "warning", "warning"
        INFO = "info", "info"

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        ACKNOWLEDGED = "acknowledged", "acknowledged"

    message = models.TextField()
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.ERROR)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    kind = models.CharField(max_length=24, choices=Kind.choices, default=Kind.OTHER)
    subject = models.CharField(max_length=200, blank=True, default="",
                               help_text="What the incident is about: a task, a robot, a queue ('' for the fleet).")
    details = models.JSONField(default=dict, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    version = models.ForeignKey("learner.PolicyVersion", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="alerts")
    created_at = models.DateTimeField(default=timezone.now)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "-created_at"])]
        constraints = [models.UniqueConstraint(
            fields=["kind", "subject"], name="one_open_incident_per_rule_and_subject",
            condition=models.Q(resolved_at__isnull=True) & ~models.Q(kind__in=["other", "auto_rollback"]))]

    def __str__(self) -> str:
        return f"alert {self.pk}: {self.message[:60]}"

    @classmethod
    def raise_alert(cls, message: str, level: str = Level.ERROR, version=None, details: dict | None = None,
                    kind: str = Kind.OTHER, subject: str = "") -> Alert:
        from core.events import broadcast_on_commit

        alert = cls.objects.create(message=message, level=level, version=version, kind=kind, subject=subject,
                                   details=details or {})
        AuditEvent.record(None, "alert.raise", alert, reason=message, details={"kind": kind, "subject": subject,
                                                                             **(details or {})})
        broadcast_on_commit("alert", {"message": message, "level": level, "alert": alert.pk, "kind": kind})
        transaction.on_commit(lambda: _announce(alert, "fired"))
        return alert

    @classmethod
    def open_incident(cls, kind: str, subject: str, message: str, level: str = Level.ERROR,
                      details: dict | None = None) -> Alert | None:
        """Fire the rule's incident for `subject` unless one is open already (then None): once per incident, even
        when two checks race (the partial unique constraint decides)."""
        if cls.objects.filter(kind=kind, subject=subject, resolved_at__isnull=True).exists():
            return None
        try:
            with transaction.atomic():
                return cls.raise_alert(message, level=level, details=details, kind=kind, subject=subject)
        except IntegrityError:
            return None

    @classmethod
    def open_incidents(cls, kind: str) -> dict[str, Alert]:
        return {alert.subject: alert for alert in cls.objects.filter(kind=kind, resolved_at__isnull=True)}

    def resolve(self, reason: str, details: dict | None = None) -> bool:
        """The rule's condition cleared: the incident ends (audited, heard live and by webhooks). False if it had
        ended already."""
        from core.events import broadcast_on_commit

        with transaction.atomic():
            ended = Alert.objects.filter(pk=self.pk, resolved_at__isnull=True).update(resolved_at=timezone.now())
            if not ended:
                return False
            self.refresh_from_db(fields=["resolved_at"])
            AuditEvent.record(None, "alert.resolve", self, reason=reason,
                              details={"kind": self.kind, "subject": self.subject, **(details or {})})
            broadcast_on_commit("alert.resolved", {"alert": self.pk, "message": reason})
            transaction.on_commit(lambda: _announce(self, "resolved"))
        return True

    def acknowledge(self, actor, reason: str = "") -> AuditEvent:
        from core.events import broadcast_on_commit

        event = apply_transition(self, verb="alert.acknowledge", field="status", to=self.Status.ACKNOWLEDGED,
                                 allowed_from={self.Status.ACTIVE}, actor=actor, reason=reason,
                                 acknowledged_by=actor, acknowledged_at=timezone.now())
        broadcast_on_commit("alert.acknowledged", {"alert": self.pk})
        return event
