"""The fleet's system of record: tasks, robots, episodes, rollouts, flags, labels and the audit trail.

Every state change is a method here that runs in a transaction, locks its row, refuses an illegal move
(raising IllegalTransition and changing nothing) and writes an AuditEvent. Nothing else sets a status.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone


class IllegalTransition(Exception):
    """The object's current state does not allow this change; nothing was changed."""


class AuditEvent(models.Model):
    """Who did what to which object, when, why, and the figures they saw. Also the outbox for live events."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    verb = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)  # app_label.model
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-created_at"]),
            models.Index(fields=["verb", "-created_at"]),
        ]

    def __str__(self) -> str:
        who = self.actor.get_username() if self.actor_id else "system"
        return f"{who} {self.verb} {self.object_repr}"

    @classmethod
    def record(cls, actor, verb: str, obj: models.Model, *, reason: str = "", details: dict | None = None):
        return cls.objects.create(
            actor=actor if actor is not None and actor.is_authenticated else None,
            verb=verb,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            reason=reason,
            details=details or {},
        )


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
        SIM = "sim", "simulated"
        REAL = "real", "real"

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

    def _changed(self, event) -> None:
        from fleet.events import broadcast_on_commit

        broadcast_on_commit("robot.status", {"robot": self.pk, "name": self.name, "status": self.status,
                                             "verb": event.verb})

    @classmethod
    def add(cls, name: str, tasks, actor=None, kind: str = Kind.SIM) -> Robot:
        """Add a robot to the fleet (stopped; `start` it to run episodes), on the version the fleet runs, if any:
        it joins the fleet's rollout (never a canary's). Under the rollout lock, so a deployment in flight either
        sees the new robot or is seen by it."""
        from learner.models import PolicyVersion, rollout_lock

        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError("a robot needs a name of 1 to 64 characters")
        try:
            with transaction.atomic():
                rollout_lock()
                robot = cls.objects.create(name=name, kind=kind)
                robot.tasks.set(tasks)
                AuditEvent.record(actor, "robot.add", robot, details={"tasks": sorted(t.env_name for t in tasks)})
                deployed = PolicyVersion.deployed()
                if deployed is not None:
                    robot.assign_version(deployed, actor, reason="a new robot runs the fleet's version")
                    for rollout in Rollout.objects.filter(status=Rollout.Status.ACTIVE, stage=Rollout.Stage.FLEET,
                                                          version=deployed):
                        rollout.robots.add(robot)
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
        self._abort_after_commit()

    def set_tasks(self, tasks, actor=None, reason: str = "") -> AuditEvent:
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            before = sorted(locked.tasks.values_list("env_name", flat=True))
            locked.tasks.set(tasks)
            return AuditEvent.record(actor, "robot.set_tasks", locked, reason=reason,
                                     details={"from": before, "to": sorted(t.env_name for t in tasks)})

    def start(self, actor, reason: str = "") -> AuditEvent:
        """Run episodes back to back from now on (the first is scheduled after commit)."""
        if self.retired:
            raise IllegalTransition(f"robot {self.name} was removed from the fleet")
        event = self._set_enabled(True, actor, reason)
        self._schedule_after_commit()
        return event

    def stop(self, actor, reason: str = "") -> AuditEvent:
        """Finish the running episode, then run no more."""
        return self._set_enabled(False, actor, reason)

    def _set_enabled(self, enabled: bool, actor, reason: str) -> AuditEvent:
        word = "started" if enabled else "stopped"
        try:
            event = apply_transition(self, verb=f"robot.{'start' if enabled else 'stop'}", field="enabled",
                                     allowed_from={not enabled}, to=enabled, actor=actor, reason=reason)
        except IllegalTransition:
            raise IllegalTransition(f"robot {self.name} is already {word}") from None
        self._changed(event)
        return event

    def pause(self, actor, reason: str = "") -> AuditEvent:
        """Abort the running episode within a few steps and run none until resumed."""
        event = apply_transition(
            self, verb="robot.pause", field="status", to=self.Status.PAUSED, actor=actor, reason=reason,
            allowed_from={self.Status.IDLE, self.Status.RUNNING, self.Status.EXPERT, self.Status.OFFLINE},
        )
        self._abort_after_commit()
        self._changed(event)
        return event

    def _abort_after_commit(self) -> None:
        from fleet import bus

        robot_id = self.pk
        transaction.on_commit(lambda: bus.client().set(bus.abort_key(robot_id), "1", px=600_000))

    def resume(self, actor, reason: str = "") -> AuditEvent:
        # Back to offline: the robot is "idle" only once its actor heartbeats again.
        event = apply_transition(
            self, verb="robot.resume", field="status", to=self.Status.OFFLINE, actor=actor, reason=reason,
            allowed_from={self.Status.PAUSED},
        )
        from fleet import bus

        robot_id = self.pk
        transaction.on_commit(lambda: bus.client().delete(bus.abort_key(robot_id)))
        self._changed(event)
        self._schedule_after_commit()
        return event

    def request_takeover(self, actor, reason: str = "") -> AuditEvent:
        """An operator puts the expert in control of the running episode, for the rest of that episode."""
        from fleet import bus

        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            if locked.status not in (self.Status.RUNNING, self.Status.EXPERT):
                raise IllegalTransition(f"cannot take over robot {locked}: it is {locked.status}, not running")
            event = AuditEvent.record(actor, "robot.takeover", locked, reason=reason)
            robot_id = self.pk
            transaction.on_commit(lambda: bus.request_takeover(robot_id))
        self._changed(event)
        return event

    def _schedule_after_commit(self) -> None:
        from fleet.actor import schedule_episode

        robot_id = self.pk
        transaction.on_commit(lambda: schedule_episode(robot_id))

    def mark_offline(self, silent_since, reason: str = "heartbeat timeout") -> AuditEvent:
        """The sweep's verdict on a robot that has not heartbeat since `silent_since`."""
        event = apply_transition(
            self, verb="robot.offline", field="status", to=self.Status.OFFLINE, reason=reason,
            allowed_from=set(self.REPORTABLE), condition=models.Q(last_heartbeat__lt=silent_since),
        )
        self._changed(event)
        return event

    def heartbeat(self, status: str) -> bool:
        """An actor reports it is alive and what it is doing. Returns False if the robot is paused.

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
                self._changed(event)
                return True
        updated = Robot.objects.filter(pk=self.pk, status__in=self.REPORTABLE).update(
            status=status, last_heartbeat=now
        )
        if updated:
            self.status, self.last_heartbeat = status, now
        return bool(updated)

    def assign_version(self, version, actor=None, reason: str = "") -> AuditEvent:
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            previous = locked.policy_version_id
            Robot.objects.filter(pk=self.pk).update(policy_version=version)
            event = AuditEvent.record(actor, "robot.assign_version", locked, reason=reason,
                                      details={"from": previous, "to": version.pk if version else None})
        self.policy_version = version
        from fleet import bus
        from fleet.events import broadcast_on_commit

        # Actors prefetch the weights as soon as the nudge arrives (first in the round trip), and swap at their
        # next episode boundary.
        nudge = None if version is None else (bus.VERSIONS_CHANNEL, {
            "robot": self.pk, "version": version.pk, "path": version.checkpoint_path,
            "sha256": version.checkpoint_sha256})
        broadcast_on_commit("robot.version", {"robot": self.pk, "version": version.pk if version else None},
                            nudge=nudge)
        if version is not None:
            if locked.enabled and locked.status != self.Status.PAUSED:
                self._schedule_after_commit()  # a started robot idling for want of a version runs now
        return event


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
        permissions = [
            ("flag_episode", "Can flag episodes for review"),
            ("label_episode", "Can label episodes"),
        ]
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


class EpisodeFlag(models.Model):
    """An operator's request that an episode be reviewed."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        LABELLED = "labelled", "labelled"
        DISMISSED = "dismissed", "dismissed"

    episode = models.ForeignKey(Episode, on_delete=models.CASCADE, related_name="flags")
    raised_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                  related_name="raised_flags")
    reason = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="resolved_flags")
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"flag on episode {self.episode_id}"

    @classmethod
    def raise_flag(cls, episode: Episode, actor, reason: str) -> EpisodeFlag:
        reason = reason.strip()
        if not reason:
            raise ValueError("a flag needs a reason")
        with transaction.atomic():
            flag = cls.objects.create(episode=episode, raised_by=actor, reason=reason)
            AuditEvent.record(actor, "episode.flag", episode, reason=reason, details={"flag": flag.pk})
        return flag

    def resolve(self, actor, resolution: str, reason: str = "") -> AuditEvent:
        if resolution not in (self.Status.LABELLED, self.Status.DISMISSED):
            raise ValueError(f"a flag is resolved as labelled or dismissed, not {resolution!r}")
        return apply_transition(
            self, verb=f"flag.{resolution}", field="status", to=resolution, actor=actor, reason=reason,
            allowed_from={self.Status.OPEN}, resolved_by=actor, resolved_at=timezone.now(),
        )


class EpisodeLabel(models.Model):
    """An annotator's verdict on a failed or flagged episode."""

    class Disposition(models.TextChoices):
        KEEP = "keep", "keep as is"
        EXCLUDE = "exclude", "exclude from training"
        RELABEL = "relabel", "relabel with expert corrections"

    episode = models.OneToOneField(Episode, on_delete=models.CASCADE, related_name="label")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    failure_mode = models.CharField(max_length=64)
    failure_step = models.PositiveIntegerField(null=True, blank=True)
    notes = models.TextField(blank=True)
    disposition = models.CharField(max_length=16, choices=Disposition.choices, default=Disposition.KEEP)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["failure_mode"])]

    def __str__(self) -> str:
        return f"{self.failure_mode} on episode {self.episode_id}"

    def training_arrays(self, arrays: dict) -> dict | None:
        """What the episode teaches the learner under this label: nothing if excluded; if relabelled, the
        policy's steps from the failure on carry the expert's corrections as annotator interventions."""
        if self.disposition == self.Disposition.EXCLUDE:
            return None
        if self.disposition == self.Disposition.RELABEL:
            from fleet.sim.episode_data import relabelled

            return relabelled(arrays, self.failure_step)
        return arrays


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
    robots = models.ManyToManyField(Robot, blank=True, related_name="rollouts")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="requested_rollouts")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="approved_rollouts")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
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


class EpisodeRollup(models.Model):
    """Episode counts per minute and per hour, by task, robot, policy version and source: what the dashboards
    read instead of scanning episodes. Kept by a PostgreSQL trigger on Episode's inserts and deletes (migrations
    0005 and 0007; interventions come from Episode.intervention_count), inside the ingesting transaction, so it is
    never stale and never double-counts a retried episode. Episodes are not edited in place (the admin shows
    them read-only): an UPDATE of a counted column would not reach these rows.

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
    successes = models.IntegerField(default=0)
    steps = models.BigIntegerField(default=0)
    success_steps = models.BigIntegerField(default=0, help_text="Steps of the successful episodes.")
    intervention_steps = models.BigIntegerField(default=0)
    interventions = models.IntegerField(default=0, help_text="Gate and operator segments (not annotators').")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["size", "bucket", "task", "robot_id", "version_id", "source"],
                                               name="rollup_key")]
        indexes = [models.Index(fields=["size", "source", "bucket"])]
