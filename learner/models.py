"""Policy versions: what the learner publishes and what supervisors let through to robots."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from core import locks, metrics
from core.audit import IllegalTransition, apply_transition
from core.events import broadcast_on_commit
from core.models import AuditEvent


class PolicyVersion(models.Model):
    """One published policy: its checkpoint on storage, its lineage and where it is in its lifecycle."""

    class State(models.TextChoices):
        CHECKPOINT = "checkpoint", "checkpoint"
        CANDIDATE = "candidate", "candidate"
        EVALUATING = "evaluating", "evaluating"
        AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
        CANARY = "canary", "canary"
        DEPLOYED = "deployed", "deployed"
        SUPERSEDED = "superseded", "superseded"
        REJECTED = "rejected", "rejected"
        ROLLED_BACK = "rolled_back", "rolled back"

    S = State
    # States in which robots may run the version: only a version whose checkpoint still exists may enter them.
    RUNNABLE = {S.CANDIDATE, S.EVALUATING, S.AWAITING_APPROVAL, S.CANARY, S.DEPLOYED}
    # verb -> (states it may start from, state it leads to). "deploy" is the continuous mode (SOP's own):
    # a checkpoint goes straight to the whole fleet.
    TRANSITIONS = {
        "nominate": ({S.CHECKPOINT}, S.CANDIDATE),
        "start_evaluation": ({S.CANDIDATE}, S.EVALUATING),
        "finish_evaluation": ({S.EVALUATING}, S.AWAITING_APPROVAL),
        "approve_canary": ({S.AWAITING_APPROVAL}, S.CANARY),
        "promote": ({S.CANARY, S.AWAITING_APPROVAL}, S.DEPLOYED),
        "deploy": ({S.CHECKPOINT, S.CANDIDATE, S.ROLLED_BACK, S.SUPERSEDED}, S.DEPLOYED),
        "supersede": ({S.DEPLOYED}, S.SUPERSEDED),
        "reject": ({S.CANDIDATE, S.EVALUATING, S.AWAITING_APPROVAL}, S.REJECTED),
        "roll_back": ({S.CANARY, S.DEPLOYED}, S.ROLLED_BACK),
    }

    number = models.PositiveIntegerField(unique=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    algorithm = models.CharField(max_length=32, help_text="bc, hg_dagger, recap, ...")
    config = models.JSONField(default=dict, blank=True)
    checkpoint_path = models.CharField(max_length=500, help_text="Its name in storage (core.storage).")
    checkpoint_sha256 = models.CharField(max_length=64)
    checkpoint_removed_at = models.DateTimeField(
        null=True, blank=True, help_text="When retention deleted the checkpoint's files (learner.retention); the "
                                         "version stays for its episodes and lineage but can no longer run.")
    state = models.CharField(max_length=20, choices=State.choices, default=State.CHECKPOINT)
    train_steps = models.PositiveBigIntegerField(default=0)
    samples_online = models.PositiveBigIntegerField(default=0)
    samples_offline = models.PositiveBigIntegerField(default=0)
    samples_intervention = models.PositiveBigIntegerField(default=0)
    first_episode_id = models.BigIntegerField(null=True, blank=True)
    last_episode_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-number"]
        indexes = [models.Index(fields=["state", "-number"])]

    def __str__(self) -> str:
        return f"v{self.number}"

    @classmethod
    def deployed(cls) -> PolicyVersion | None:
        """The version the whole fleet runs (the newest, should a transition be caught half-way)."""
        return cls.objects.filter(state=cls.State.DEPLOYED).order_by("-number").first()

    def advance(self, verb: str, actor=None, reason: str = "", details: dict | None = None) -> AuditEvent:
        """Apply one lifecycle step (a key of TRANSITIONS); IllegalTransition if the state does not allow it."""
        try:
            allowed_from, to = self.TRANSITIONS[verb]
        except KeyError:
            raise ValueError(f"unknown policy version transition {verb!r}") from None
        condition = None
        if to in self.RUNNABLE:
            if self.checkpoint_removed_at is not None:
                raise IllegalTransition(f"cannot {verb.replace('_', ' ')} {self}: retention removed its checkpoint "
                                        f"on {self.checkpoint_removed_at:%Y-%m-%d %H:%M} UTC, so it can no longer run")
            condition = models.Q(checkpoint_removed_at__isnull=True)  # and not meanwhile (retention locks rollouts)
        event = apply_transition(self, verb=f"version.{verb}", field="state", allowed_from=allowed_from, to=to,
                                 actor=actor, reason=reason, details=details, condition=condition)
        broadcast_on_commit("version.state", {"version": self.pk, "number": self.number, "state": self.state})
        return event


def publish_version(policy, *, algorithm: str, config: dict, parent: PolicyVersion | None = None,
                    **counters) -> PolicyVersion:
    """Write the checkpoint first, then the row that points at it, under the next version number.

    An advisory lock serializes publishers, so two learners (or a learner and a pretraining command) never
    take the same number; a crash between the files and the row leaves only an unreferenced directory.
    """
    import uuid

    from django.db import transaction

    from learner import checkpoint_store

    path = f"policies/{uuid.uuid4().hex}"
    sha = checkpoint_store.write(policy, path)
    with transaction.atomic():
        locks.hold(locks.PUBLISH)
        number = (PolicyVersion.objects.aggregate(models.Max("number"))["number__max"] or 0) + 1
        version = PolicyVersion.objects.create(number=number, parent=parent, algorithm=algorithm, config=config,
                                               checkpoint_path=path, checkpoint_sha256=sha, **counters)
        AuditEvent.record(None, "version.publish", version,
                          details={"algorithm": algorithm, "parent": parent.number if parent else None})
        broadcast_on_commit("version.state", {"version": version.pk, "number": number, "state": version.state})
        transaction.on_commit(metrics.version_published)
    return version


class TrainingRun(models.Model):
    """One continuous post-training run: its algorithm and config, where its resumable state lives, its progress."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        STOPPED = "stopped", "stopped"

    algorithm = models.CharField(max_length=32)
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    base_version = models.ForeignKey(PolicyVersion, null=True, on_delete=models.PROTECT, related_name="+")
    state_path = models.CharField(max_length=500, blank=True, help_text="Resumable state, relative to storage.")
    step = models.PositiveBigIntegerField(default=0)
    episode_cursor = models.BigIntegerField(default=0, help_text="Highest episode id folded into the buffer.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["status"], condition=models.Q(status="active"),
                                               name="one_active_training_run")]

    def __str__(self) -> str:
        return f"{self.algorithm} run {self.pk}"

    def stop(self, actor=None, reason: str = "") -> AuditEvent:
        return apply_transition(self, verb="learner.stop", field="status", to=self.Status.STOPPED, actor=actor,
                                reason=reason, allowed_from={self.Status.ACTIVE})


class TrainingMetric(models.Model):
    """A point on the learner's curves: losses, the resampler's online share per task, buffer, staleness.

    A restart (a slice that rebuilt the trainer from the run's saved state: after a crash, or in another process)
    marks its first point with `resumed_from`, the saved step. The run's earlier points with a higher step were
    lost: their state was never saved and the resumed run trains those steps again. The learner page leaves them
    out and marks the restart (docs/decisions.md)."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveBigIntegerField()
    loss = models.FloatField()
    samples_per_second = models.FloatField()
    staleness_mean = models.FloatField(null=True)
    staleness_max = models.IntegerField(null=True)
    tasks = models.JSONField(default=dict, help_text="Per task: w_on, l_on, l_off, buffer sizes.")
    resumed_from = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The first point after a restart: the saved step the slice resumed from.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "step"]
        indexes = [
            models.Index(fields=["run", "step"]),
            models.Index(fields=["run", "created_at"], name="metric_run_time"),  # the page's points by time
            models.Index(fields=["run", "created_at"], condition=models.Q(resumed_from__isnull=False),
                         name="metric_run_restarts"),
        ]

    def point(self) -> dict:
        """This point of the learner's curves, as sent with the learner page and pushed live."""
        return {"run": self.run_id, "step": self.step, "loss": self.loss,
                "samples_per_second": round(self.samples_per_second), "staleness_mean": self.staleness_mean,
                "staleness_max": self.staleness_max, "tasks": self.tasks, "resumed_from": self.resumed_from,
                "at": self.created_at.isoformat()}
