"""The fleet's system of record: tasks, robots, episodes and their payloads, and the dashboards' roll-ups.

Every state change is a method here that runs in a transaction, locks its row, refuses an illegal move
(raising IllegalTransition and changing nothing) and writes an AuditEvent (core.audit). Nothing else sets a
status. What a change means outside the database (queue an episode, tell an actor) is fleet.control's job.
"""
from __future__ import annotations

import uuid
from datetime import timedelta

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
        OPERATOR = "operator", "operator in control"
        STARTING = "starting", "starting"
        PAUSED = "paused", "paused"
        OFFLINE = "offline", "offline"

    class State(models.TextChoices):
        """What a person sees of the robot: its status, with the operators' stop and removal first."""

        POLICY = "policy", "policy in control"
        EXPERT = "expert", "expert in control"
        OPERATOR = "operator", "operator in control"
        IDLE = "idle", "idle"
        STARTING = "starting", "starting"
        PAUSED = "paused", "paused"
        STOPPED = "stopped", "stopped"
        OFFLINE = "offline", "offline"
        REMOVED = "removed", "removed"

    # What a robot may report about itself. Paused is an operator's decision a robot never overrides; starting (a
    # start or resume waiting for the robot to answer) and offline (the sweep's verdict) end with its next report.
    REPORTABLE = (Status.IDLE, Status.RUNNING, Status.EXPERT, Status.OPERATOR)
    # Reports that move nothing the dashboards must hear of (the gate taking and handing back control, a renewed
    # status): one conditional UPDATE, about once a second per robot. Any other move is announced.
    QUIET_MOVES = {Status.RUNNING: (Status.RUNNING, Status.EXPERT), Status.EXPERT: (Status.RUNNING, Status.EXPERT),
                   Status.IDLE: (Status.IDLE,), Status.OPERATOR: (Status.OPERATOR,)}
    # An operator's takeover holds the operator status against the robot's reports until the episode that took it
    # up ends (fleet.control.end_takeover) or, if no episode took it up, until the takeover request lapses.
    TAKEOVER_SECONDS = 60
    # What an operator may tell a robot, in the order its tile offers them (fleet.control.COMMANDS runs them).
    COMMANDS = {"start": "Start", "stop": "Stop", "pause": "Pause", "resume": "Resume", "takeover": "Take over",
                "remove": "Remove"}

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.SIM)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    status_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When a command, the sweep or the robot's return last moved its status (not "
                                         "the running / expert telemetry of every heartbeat).")
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

    # --- what people see and may do ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """One word for the robot: removed and stopped (operators' decisions) come before its status."""
        if self.retired:
            return self.State.REMOVED
        if not self.enabled:
            return self.State.STOPPED
        return {self.Status.RUNNING: self.State.POLICY}.get(self.status, self.status)

    def refusal(self, command: str) -> str | None:
        """Why an operator may not give `command` now, in words for them; None when they may. The one rule: the
        tiles offer exactly the commands this allows, and every transition checks it under the row lock."""
        name, status, phrase = self.name, self.status, self._phrase()
        if command not in self.COMMANDS:
            return f"{command!r} is not a robot command"
        if self.retired:
            return f"robot {name} was removed from the fleet"
        if command == "start":
            return f"robot {name} is already started" if self.enabled else None
        if command == "stop":
            return None if self.enabled else f"robot {name} is already stopped"
        if command == "remove":
            return f"cannot remove robot {name}: it is started; stop it first" if self.enabled else None
        if command == "resume":
            return None if status == self.Status.PAUSED else \
                f"cannot resume robot {name}: it is {phrase}; only a paused robot resumes"
        if not self.enabled:  # pause, takeover
            return f"cannot {self.COMMANDS[command].lower()} robot {name}: it is stopped; start it first"
        if command == "pause":
            return f"robot {name} is already paused" if status == self.Status.PAUSED else None
        # takeover: the running episode, or the one a start or resume is about to begin
        if status in (self.Status.RUNNING, self.Status.EXPERT, self.Status.STARTING):
            return None
        if status == self.Status.OPERATOR:
            return f"cannot take over robot {name}: an operator is in control of it already"
        if status == self.Status.PAUSED:
            return f"cannot take over robot {name}: it is paused; resume it first"
        return f"cannot take over robot {name}: it is {phrase}, not running an episode"

    def _phrase(self) -> str:
        if self.status in (self.Status.RUNNING, self.Status.EXPERT, self.Status.OPERATOR):
            return f"running ({self.State(self.state).label})" if self.enabled else "running"
        return self.get_status_display() if self.enabled or self.status == self.Status.PAUSED else "stopped"

    def allowed_commands(self) -> list[str]:
        return [command for command in self.COMMANDS if self.refusal(command) is None]

    def live_state(self) -> dict:
        """What a tile shows of the robot and offers for it: the POST's answer and the `robot.status` event."""
        return {"robot": self.pk, "name": self.name, "state": str(self.state), "label": self.State(self.state).label,
                "status": self.status, "enabled": self.enabled, "paused": self.status == self.Status.PAUSED,
                "commands": self.allowed_commands()}

    # --- transitions -------------------------------------------------------------------------------------------

    @classmethod
    def add(cls, name: str, tasks, actor=None, kind: str = Kind.SIM, reason: str = "") -> Robot:
        """A new robot row (stopped, no version), audited. fleet.control.add also gives it the fleet's version."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError("a robot needs a name of 1 to 64 characters")
        try:
            with transaction.atomic():
                robot = cls.objects.create(name=name, kind=kind)
                robot.tasks.set(tasks)
                AuditEvent.record(actor, "robot.add", robot, reason=reason,
                                  details={"tasks": sorted(t.env_name for t in tasks)})
        except IntegrityError:  # the unique name, also when two operators add the same name at once
            raise ValueError(f"a robot named {name!r} already exists") from None
        return robot

    def _locked(self, command: str | None = None) -> Robot:
        """The row, locked FOR NO KEY UPDATE (see core.audit.apply_transition); with `command`, refused unless the
        locked state allows it."""
        locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
        refusal = locked.refusal(command) if command else None
        if refusal:
            self._take_state(locked)  # the caller answers with the state as it is
            raise IllegalTransition(refusal)
        return locked

    # What live_state() is computed from: a broadcast must read them fresh, never from an object an actor loaded at
    # its episode's start (the robot may have been stopped since).
    STATE_FIELDS = ("status", "status_changed_at", "enabled", "retired", "last_heartbeat")

    def _take_state(self, other: Robot) -> None:
        for name in self.STATE_FIELDS:
            setattr(self, name, getattr(other, name))

    def remove(self, actor, reason: str = "") -> None:
        """Take the stopped robot out of the fleet: deleted if it never ran an episode, else retired (history
        kept)."""
        with transaction.atomic():
            locked = self._locked("remove")
            AuditEvent.record(actor, "robot.remove", locked, reason=reason)
            if locked.episodes.exists():
                Robot.objects.filter(pk=self.pk).update(retired=True, enabled=False)
                self.retired, self.enabled = True, False
            else:
                locked.delete()
                self.retired = True

    def set_tasks(self, tasks, actor=None, reason: str = "") -> AuditEvent:
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            before = sorted(locked.tasks.values_list("env_name", flat=True))
            locked.tasks.set(tasks)
            return AuditEvent.record(actor, "robot.set_tasks", locked, reason=reason,
                                     details={"from": before, "to": sorted(t.env_name for t in tasks)})

    def _command(self, command: str, actor, reason: str, *, verb: str, field: str, to, **updates) -> AuditEvent:
        """An operator's command: refused unless the locked row allows it, else the audited transition."""
        with transaction.atomic():
            locked = self._locked(command)
            event = apply_transition(locked, verb=verb, field=field, allowed_from={getattr(locked, field)}, to=to,
                                     actor=actor, reason=reason, **updates)
        self._take_state(locked)
        return event

    def set_enabled(self, enabled: bool, actor, reason: str = "") -> AuditEvent:
        """Started (runs episodes back to back) or stopped (finishes the running episode, then runs no more). A
        robot started while offline is starting until it answers, or offline again after FLEET_HEARTBEAT_TIMEOUT."""
        command = "start" if enabled else "stop"
        with transaction.atomic():
            locked = self._locked(command)
            updates = {}
            if enabled and locked.status == self.Status.OFFLINE:
                updates = {"status": self.Status.STARTING, "status_changed_at": timezone.now()}
            event = apply_transition(locked, verb=f"robot.{command}", field="enabled", allowed_from={not enabled},
                                     to=enabled, actor=actor, reason=reason, **updates,
                                     details={"status": updates["status"]} if updates else None)
        self._take_state(locked)
        return event

    def pause(self, actor, reason: str = "") -> AuditEvent:
        return self._command("pause", actor, reason, verb="robot.pause", field="status", to=self.Status.PAUSED,
                             status_changed_at=timezone.now())

    def resume(self, actor, reason: str = "") -> AuditEvent:
        # Starting, not idle or offline: nothing is known of the robot until it next reports, which a running actor
        # or robot does within a second or two; the sweep marks it offline if it does not.
        return self._command("resume", actor, reason, verb="robot.resume", field="status", to=self.Status.STARTING,
                             status_changed_at=timezone.now())

    def take_over(self, actor, reason: str = "") -> AuditEvent:
        """An operator puts the expert in control of the running episode, or of the next one a start or resume is
        about to begin (fleet.control.take_over tells the robot)."""
        return self._command("takeover", actor, reason, verb="robot.takeover", field="status",
                             to=self.Status.OPERATOR, status_changed_at=timezone.now())

    def end_takeover(self) -> bool:
        """The episode the takeover reached has ended: back to the policy (telemetry, not a decision: the takeover
        is audited, its end is the episode's operator segment). False if the robot was not under a takeover."""
        ended = Robot.objects.filter(pk=self.pk, status=self.Status.OPERATOR).update(
            status=self.Status.RUNNING, status_changed_at=timezone.now())
        if ended:
            self.refresh_from_db(fields=self.STATE_FIELDS)
        return bool(ended)

    def mark_offline(self, silent_since, reason: str = "heartbeat timeout") -> AuditEvent:
        """The sweep's verdict on a robot that has not reported since `silent_since`, nor been started, resumed or
        taken over since."""
        silent = (models.Q(last_heartbeat__lt=silent_since) | models.Q(last_heartbeat=None)) & (
            models.Q(status_changed_at__lt=silent_since) | models.Q(status_changed_at=None))
        event = apply_transition(
            self, verb="robot.offline", field="status", to=self.Status.OFFLINE, reason=reason,
            allowed_from={*self.REPORTABLE, self.Status.STARTING}, condition=silent,
            status_changed_at=timezone.now(),
        )
        self.refresh_from_db(fields=self.STATE_FIELDS)
        return event

    def heartbeat(self, status: str) -> tuple[bool, str | None]:
        """The robot reports it is alive and what it is doing. Returns (alive, left): alive is False if the robot is
        paused (it must not run); `left` is the status it left when that is news for the dashboards (it came back
        from offline, answered a start or resume, went idle or busy, or a takeover lapsed), else None.

        Activity is telemetry, reported about once a second, and is not audited; coming back from offline is. An
        operator's takeover holds against reports of other activity (the robot has not seen it yet) until the
        episode that took it up ends or, taken up by none, for TAKEOVER_SECONDS.
        """
        if status not in self.REPORTABLE:
            raise ValueError(f"a robot may report {', '.join(self.REPORTABLE)}, not {status!r}")
        now = timezone.now()
        if Robot.objects.filter(pk=self.pk, status__in=self.QUIET_MOVES[status]).update(status=status,
                                                                                       last_heartbeat=now):
            self.status, self.last_heartbeat = status, now
            return True, None
        with transaction.atomic():
            locked = Robot.objects.select_for_update(no_key=True).get(pk=self.pk)
            left = locked.status
            if left == self.Status.PAUSED:
                Robot.objects.filter(pk=self.pk).update(last_heartbeat=now)
                alive, moved = False, False
            elif left == self.Status.OFFLINE:
                apply_transition(locked, verb="robot.online", field="status", to=status, allowed_from={left},
                                 last_heartbeat=now, status_changed_at=now)
                alive, moved = True, True
            elif left == self.Status.OPERATOR and locked.status_changed_at is not None and \
                    locked.status_changed_at > now - timedelta(seconds=self.TAKEOVER_SECONDS):
                Robot.objects.filter(pk=self.pk).update(last_heartbeat=now)
                alive, moved = True, False
            else:
                Robot.objects.filter(pk=self.pk).update(status=status, last_heartbeat=now, status_changed_at=now)
                alive, moved = True, True
        locked.refresh_from_db(fields=self.STATE_FIELDS)
        self._take_state(locked)
        return alive, (left if moved else None)

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
# successes are disjoint and together are every success. The roll-up trigger (fleet migration 0014) states the same
# condition in SQL. Annotators' relabels, written after the episode, change neither: they say what the expert would
# have done, not who acted.
AUTONOMOUS_SUCCESS = models.Q(outcome=Episode.Outcome.SUCCESS, intervention_steps=0, intervention_count=0)
ASSISTED_SUCCESS = models.Q(outcome=Episode.Outcome.SUCCESS) & ~models.Q(intervention_steps=0, intervention_count=0)


class EpisodePayload(models.Model):
    """The episode's arrays as a compressed .npz (read with allow_pickle=False); never loaded by listings.

    `data` is stored EXTERNAL (migration 0008): out of line like any large value, but without PostgreSQL's own
    compression, which can only fail on bytes that are deflated already and cost half of each insert trying.
    Payloads older than PAYLOAD_ARCHIVE_AFTER_DAYS move to storage (fleet.archive): `data` is then NULL and
    `archive` names the object, whose bytes must hash to `sha256`."""

    episode = models.OneToOneField(Episode, primary_key=True, on_delete=models.CASCADE, related_name="payload")
    data = models.BinaryField(null=True)
    nbytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    archive = models.CharField(max_length=200, blank=True, db_default="",
                               help_text="Its name in storage once archived (core.storage); empty while in `data`.")
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(
            condition=models.Q(data__isnull=False, archive="") | models.Q(data__isnull=True, archived_at__isnull=False)
            & ~models.Q(archive=""), name="payload_in_one_place")]


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
    0005, 0007 and 0014; interventions come from Episode.intervention_count), inside the ingesting transaction, so
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
