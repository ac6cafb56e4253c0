"""The fleet's system of record: tasks, robots, episodes and their payloads, and the dashboards' roll-ups.

Every state change is a method here that runs in a transaction, locks its row, refuses an illegal move
(raising IllegalTransition and changing nothing) and writes an AuditEvent (core.audit). Nothing else sets a
status. What a change means outside the database (queue an episode, tell an actor) is fleet.control's job.
"""
from __future__ import annotations

import uuid

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core.audit import IllegalTransition, apply_transition
from core.models import AuditEvent


class Task(models.Model):
    """A Meta-World v3 manipulation task that robots can be assigned."""

    env_name = models.CharField(max_length=64, unique=True, help_text="Meta-World v3 name, e.g. pick-place-v3")
    title = models.CharField(max_length=120)
    max_steps = models.PositiveIntegerField(default=500)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["env_name"]

    def __str__(self) -> str:
        return self.env_name


class Robot(models.Model):
    class Kind(models.TextChoices):
        SIM = "sim", "simulated"  # run by sopweb's own actor workers (actors/)
        REAL = "real", "real"
        REMOTE = "remote", "remote (API)"  # enrolled over the robot gateway (gateway/): runs its own episodes

    class Status(models.TextChoices):
        IDLE = "idle", "idle"
        RUNNING = "running", "running"
        EXPERT = "expert", "expert in control"
        PAUSED = "paused", "paused"
        OFFLINE = "offline", "offline"

    # What an actor may report about itself; paused is an operator's decision an actor never overrides.
    REPORTABLE = (Status.IDLE, Status.RUNNING, Status.EXPERT)

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.SIM)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    tasks = models.ManyToManyField(Task, blank=True, related_name="robots")
    policy_version = models.ForeignKey(
        "learner.PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="robots",
        help_text="The version this robot runs from its next episode on; set by rollouts.",
    )
    enabled = models.BooleanField(default=False, help_text="Started: runs episodes back to back until stopped.")
    retired = models.BooleanField(default=False, help_text="Removed from the fleet; kept for its episodes' history.")
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [("control_robot", "Can pause, resume and take over robots")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def add(cls, name: str, tasks, actor=None, kind: str = Kind.SIM) -> Robot:
        """A new robot row (stopped, no version), audited. fleet.control.add also gives it the fleet's version."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError("a robot needs a name of 1 to 64 characters")
        try:
            with transaction.atomic():
                robot = cls.objects.create(name=name, kind=kind)
                robot.tasks.set(tasks)
                AuditEvent.record(actor, "robot.add", robot, details={"tasks": sorted(t.env_name for t in tasks)})
        except IntegrityError:  # the unique name, also when two operators add the same name at once
            raise ValueError(f"a robot named {name!r} already exists") from None
        return robot

    def remove(self, actor, reason: str = "") -> None:
        """Take the robot out of the fleet: deleted if it never ran an episode, else retired (history kept)."""
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            AuditEvent.record(actor, "robot.remove", locked, reason=reason)
            if locked.episodes.exists():
                Robot.objects.filter(pk=self.pk).update(retired=True, enabled=False)
                self.retired, self.enabled = True, False
            else:
                locked.delete()

    def set_tasks(self, tasks, actor=None, reason: str = "") -> AuditEvent:
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            before = sorted(locked.tasks.values_list("env_name", flat=True))
            locked.tasks.set(tasks)
            return AuditEvent.record(actor, "robot.set_tasks", locked, reason=reason,
                                     details={"from": before, "to": sorted(t.env_name for t in tasks)})

    def set_enabled(self, enabled: bool, actor, reason: str = "") -> AuditEvent:
        """Started (runs episodes back to back) or stopped (finishes the running episode, then runs no more)."""
        if enabled and self.retired:
            raise IllegalTransition(f"robot {self.name} was removed from the fleet")
        word = "started" if enabled else "stopped"
        try:
            return apply_transition(self, verb=f"robot.{'start' if enabled else 'stop'}", field="enabled",
                                    allowed_from={not enabled}, to=enabled, actor=actor, reason=reason)
        except IllegalTransition:
            raise IllegalTransition(f"robot {self.name} is already {word}") from None

    def pause(self, actor, reason: str = "") -> AuditEvent:
        return apply_transition(
            self, verb="robot.pause", field="status", to=self.Status.PAUSED, actor=actor, reason=reason,
            allowed_from={self.Status.IDLE, self.Status.RUNNING, self.Status.EXPERT, self.Status.OFFLINE},
        )

    def resume(self, actor, reason: str = "") -> AuditEvent:
        # Back to offline: the robot is "idle" only once its actor heartbeats again.
        return apply_transition(
            self, verb="robot.resume", field="status", to=self.Status.OFFLINE, actor=actor, reason=reason,
            allowed_from={self.Status.PAUSED},
        )

    def record_takeover(self, actor, reason: str = "") -> AuditEvent:
        """An operator's takeover, allowed only while an episode runs (fleet.control.take_over tells the actor)."""
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            if locked.status not in (self.Status.RUNNING, self.Status.EXPERT):
                raise IllegalTransition(f"cannot take over robot {locked}: it is {locked.status}, not running")
            return AuditEvent.record(actor, "robot.takeover", locked, reason=reason)

    def mark_offline(self, silent_since, reason: str = "heartbeat timeout") -> AuditEvent:
        """The sweep's verdict on a robot that has not heartbeat since `silent_since`."""
        return apply_transition(
            self, verb="robot.offline", field="status", to=self.Status.OFFLINE, reason=reason,
            allowed_from=set(self.REPORTABLE), condition=models.Q(last_heartbeat__lt=silent_since),
        )

    def heartbeat(self, status: str) -> tuple[bool, AuditEvent | None]:
        """An actor reports it is alive and what it is doing. Returns (False, None) if the robot is paused, and
        the audit event when it came back from offline.

        Activity (idle / running / expert) is telemetry, reported several times per episode, and is not
        audited; coming back from offline is.
        """
        if status not in self.REPORTABLE:
            raise ValueError(f"an actor may report {', '.join(self.REPORTABLE)}, not {status!r}")
        now = timezone.now()
        if self.status == self.Status.OFFLINE:
            try:
                event = apply_transition(
                    self, verb="robot.online", field="status", to=status, allowed_from={self.Status.OFFLINE},
                    last_heartbeat=now,
                )
            except IllegalTransition:
                self.refresh_from_db(fields=["status", "last_heartbeat"])
            else:
                return True, event
        updated = Robot.objects.filter(pk=self.pk, status__in=self.REPORTABLE).update(
            status=status, last_heartbeat=now
        )
        if updated:
            self.status, self.last_heartbeat = status, now
        return bool(updated), None

    def assign_version(self, version, actor=None, reason: str = "") -> AuditEvent:
        """The version this robot runs from its next episode on (fleet.control.assign_version tells its actor)."""
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            previous = locked.policy_version_id
            Robot.objects.filter(pk=self.pk).update(policy_version=version)
            event = AuditEvent.record(actor, "robot.assign_version", locked, reason=reason,
                                      details={"from": previous, "to": version.pk if version else None})
        self.policy_version = version
        self.enabled, self.status = locked.enabled, locked.status
        return event

    @property
    def wants_episodes(self) -> bool:
        """Started and not paused: its next episode should run."""
        return self.enabled and not self.retired and self.status != self.Status.PAUSED

    @property
    def in_process(self) -> bool:
        """Its episodes run in sopweb's actor workers; any other robot runs its own and talks to the API."""
        return self.kind == self.Kind.SIM


class Episode(models.Model):
    """One episode of one robot on one task: its summary. The arrays live in EpisodePayload."""

    class Source(models.TextChoices):
        ONLINE = "online", "online"
        OFFLINE_DEMO = "offline_demo", "offline demo"
        EVALUATION = "evaluation", "evaluation"

    class Outcome(models.TextChoices):
        SUCCESS = "success", "success"
        FAILURE = "failure", "failure"
        TIMEOUT = "timeout", "timeout"
        ABORTED = "aborted", "aborted"

    uuid = models.UUIDField(unique=True, default=uuid.uuid4, editable=False,
                            help_text="Chosen at episode start: the idempotency key of ingestion.")
    # No single-column FK indexes: the (fk, -finished_at) indexes below serve the same lookups, and every index
    # is paid for on each ingested episode.
    robot = models.ForeignKey(Robot, null=True, blank=True, on_delete=models.PROTECT, related_name="episodes",
                              db_index=False)
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="episodes", db_index=False)
    policy_version = models.ForeignKey("learner.PolicyVersion", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="episodes", db_index=False)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.ONLINE)
    seed = models.BigIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    steps = models.PositiveIntegerField()
    total_return = models.FloatField()
    intervention_steps = models.PositiveIntegerField(default=0)
    intervention_count = models.PositiveIntegerField(
        default=0, help_text="Times the gate or an operator took over (its gate and operator segments); the "
                             "dashboards' interventions. Annotators' relabelled segments do not count.")
    meta = models.JSONField(default=dict, blank=True, help_text="Gate parameters, pacing, software versions.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-finished_at", "-id"]
        indexes = [
            models.Index(fields=["-finished_at", "-id"]),
            models.Index(fields=["task", "-finished_at"]),
            models.Index(fields=["robot", "-finished_at"]),
            models.Index(fields=["policy_version", "-finished_at"]),
            models.Index(fields=["outcome", "-finished_at"]),
            models.Index(fields=["source", "-finished_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(intervention_steps__lte=models.F("steps")),
                                   name="episode_interventions_within_steps"),
            models.CheckConstraint(condition=models.Q(finished_at__gte=models.F("started_at")),
                                   name="episode_finishes_after_start"),
        ]

    def __str__(self) -> str:
        return f"episode {self.pk} ({self.task_id and self.task.env_name}, {self.outcome})"

    @property
    def autonomous_success(self) -> bool:
        """AUTONOMOUS_SUCCESS (below) for this row: it succeeded and only the policy acted."""
        return (self.outcome == self.Outcome.SUCCESS and self.intervention_steps == 0
                and self.intervention_count == 0)


# What "success" means on every page, chart, alert and comparison: the policy succeeded alone, with no step acted
# by anyone else (the HG-DAgger gate's expert, an operator, or any other source an upload records). A success with
# even one such step is an assisted success: the expert's rescue, not the policy's. Autonomous and assisted
# successes are disjoint and together are every success. The roll-up trigger (fleet migration 0013) states the same
# condition in SQL. Annotators' relabels, written after the episode, change neither: they say what the expert would
# have done, not who acted.
AUTONOMOUS_SUCCESS = models.Q(outcome=Episode.Outcome.SUCCESS, intervention_steps=0, intervention_count=0)
ASSISTED_SUCCESS = models.Q(outcome=Episode.Outcome.SUCCESS) & ~models.Q(intervention_steps=0, intervention_count=0)


class EpisodePayload(models.Model):
    """The episode's arrays as a compressed .npz (read with allow_pickle=False); never loaded by listings.

    `data` is stored EXTERNAL (migration 0008): out of line like any large value, but without PostgreSQL's own
    compression, which can only fail on bytes that are deflated already and cost half of each insert trying."""

    episode = models.OneToOneField(Episode, primary_key=True, on_delete=models.CASCADE, related_name="payload")
    data = models.BinaryField()
    nbytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)


class InterventionSegment(models.Model):
    """Steps [start_step, end_step) of an episode during which someone other than the policy acted."""

    class Source(models.TextChoices):
        GATE = "gate", "expert gate"
        OPERATOR = "operator", "operator takeover"
        ANNOTATOR = "annotator", "annotator relabel"

    episode = models.ForeignKey(Episode, on_delete=models.CASCADE, related_name="interventions")
    start_step = models.PositiveIntegerField()
    end_step = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=Source.choices)

    class Meta:
        ordering = ["episode", "start_step"]
        constraints = [
            models.CheckConstraint(condition=models.Q(end_step__gt=models.F("start_step")),
                                   name="segment_not_empty"),
        ]


class EpisodeRollup(models.Model):
    """Episode counts per minute and per hour, by task, robot, policy version and source: what the dashboards
    read instead of scanning episodes. Kept by a PostgreSQL trigger on Episode's inserts and deletes (migrations
    0005, 0007 and 0013; interventions come from Episode.intervention_count), inside the ingesting transaction, so
    it is never stale and never double-counts a retried episode. Successes are split into autonomous and assisted
    ones (the trigger's SQL states AUTONOMOUS_SUCCESS again): no column mixes the two. Episodes are not edited in
    place (the admin shows them read-only): an UPDATE of a counted column would not reach these rows.

    robot and version are plain ids (0: none) so that one unique key covers every row; they are derived data.
    """

    class Size(models.TextChoices):
        MINUTE = "m", "minute"
        HOUR = "h", "hour"

    size = models.CharField(max_length=1, choices=Size.choices)
    bucket = models.DateTimeField(help_text="Start of the minute or hour.")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    robot_id = models.IntegerField(default=0)
    version_id = models.IntegerField(default=0)
    source = models.CharField(max_length=16, choices=Episode.Source.choices)
    episodes = models.IntegerField(default=0)
    autonomous_successes = models.IntegerField(
        default=0, help_text="Successes in which only the policy acted (fleet.models.AUTONOMOUS_SUCCESS).")
    assisted_successes = models.IntegerField(
        default=0,
        help_text="Successes with a gate, operator or other intervention step (fleet.models.ASSISTED_SUCCESS).")
    steps = models.BigIntegerField(default=0)
    success_steps = models.BigIntegerField(default=0, help_text="Steps of the successful episodes.")
    intervention_steps = models.BigIntegerField(default=0)
    interventions = models.IntegerField(default=0, help_text="Gate and operator segments (not annotators').")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["size", "bucket", "task", "robot_id", "version_id", "source"],
                                               name="rollup_key")]
        indexes = [models.Index(fields=["size", "source", "bucket"])]


def version_model():
    """The policy-version model robots and episodes run (learner.PolicyVersion), reached through fleet's own foreign
    key: the fleet page reads versions' numbers and states, but the fleet sits below the learner and never imports
    it (docs/decisions.md, layers)."""
    return Robot._meta.get_field("policy_version").related_model
