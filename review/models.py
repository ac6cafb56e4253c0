"""Episode review: the failure-mode taxonomy, annotators' claims on episodes, rendered replay videos and dataset
export jobs.

The label itself is fleet.EpisodeLabel (the learner reads it); it is written only by ReviewClaim.submit_label, by
the annotator who holds the episode's claim, so two annotators never label the same episode at once.
"""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from core import bus, locks, storage
from core.audit import IllegalTransition, apply_transition
from core.events import broadcast_on_commit
from core.models import AuditEvent
from fleet.ingest import relabel_segments
from fleet.models import Episode, Task


class AlreadyFlagged(ValueError):
    """This person's flag on the episode is open already; nothing was added."""

    def __init__(self, flag: EpisodeFlag):
        self.flag = flag
        super().__init__(f"you flagged episode {flag.episode_id} already ({flag.created_at:%Y-%m-%d %H:%M}, "
                         f"\"{flag.reason[:80]}\"), and that flag is still open: nothing was added")


class EpisodeFlag(models.Model):
    """An operator's request that an episode be reviewed. A person has at most one open flag per episode (a
    constraint, so a double click or two tabs cannot add a second); once it is resolved they may raise another."""

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
        db_table = "fleet_episodeflag"  # moved from fleet with its table (review/migrations/0002)
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"])]
        permissions = [("flag_episode", "Can flag episodes for review")]
        constraints = [models.UniqueConstraint(fields=["episode", "raised_by"], condition=Q(status="open"),
                                               name="flag_one_open_per_person")]

    def __str__(self) -> str:
        return f"flag on episode {self.episode_id}"

    @classmethod
    def raise_flag(cls, episode: Episode, actor, reason: str) -> EpisodeFlag:
        """A new open flag, audited; AlreadyFlagged (adding nothing) if this person's flag on it is open."""
        reason = reason.strip()
        if not reason:
            raise ValueError("a flag needs a reason")
        try:
            with transaction.atomic():
                flag = cls.objects.create(episode=episode, raised_by=actor, reason=reason)
                AuditEvent.record(actor, "episode.flag", episode, reason=reason, details={"flag": flag.pk})
        except IntegrityError:  # the constraint: this person's open flag exists (perhaps raised a moment ago)
            existing = cls.objects.filter(episode=episode, raised_by=actor, status=cls.Status.OPEN).first()
            if existing is None:
                raise
            raise AlreadyFlagged(existing) from None
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
        db_table = "fleet_episodelabel"  # moved from fleet with its table (review/migrations/0002)
        indexes = [models.Index(fields=["failure_mode"])]
        permissions = [("label_episode", "Can label episodes"),
                       ("label_any_episode", "Can label episodes outside the review queue")]
        # What the learner relies on, whichever way a row is written (the form, the admin, SQL): a known
        # disposition, and a relabel names the step where the failure began.
        constraints = [
            models.CheckConstraint(condition=Q(disposition__in=["keep", "exclude", "relabel"]),
                                   name="label_disposition_known"),
            models.CheckConstraint(condition=~Q(disposition="relabel") | Q(failure_step__isnull=False),
                                   name="label_relabel_has_failure_step"),
            models.CheckConstraint(condition=~Q(failure_mode=""), name="label_failure_mode_set"),
        ]

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


class FailureMode(models.Model):
    """One entry of a task's failure-mode taxonomy; supervisors edit it in the admin."""

    DEFAULTS = [
        ("missed_grasp", "Missed grasp"),
        ("dropped_object", "Dropped object"),
        ("collision", "Collision"),
        ("wrong_placement", "Wrong placement"),
        ("stalled", "Stalled"),
        ("timeout", "Timeout"),
        ("other", "Other"),
    ]

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="failure_modes")
    code = models.SlugField(max_length=64, help_text="Stored in labels; keep it stable once labels use it.")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=1, help_text="Keyboard shortcut on the review page: a digit 1-9.")
    position = models.PositiveSmallIntegerField(default=0)
    active = models.BooleanField(default=True, help_text="Inactive modes stay on old labels but are not offered.")

    class Meta:
        ordering = ["task", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "code"], name="failure_mode_code_unique_per_task"),
            models.UniqueConstraint(fields=["task", "key"], name="failure_mode_key_unique_per_task"),
            models.CheckConstraint(condition=models.Q(key__regex=r"^[1-9]$"), name="failure_mode_key_is_a_digit"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.task})"

    @classmethod
    def seed_defaults(cls, task: Task) -> None:
        cls.objects.bulk_create(
            [cls(task=task, code=code, name=name, key=str(i), position=i)
             for i, (code, name) in enumerate(cls.DEFAULTS, start=1)],
            ignore_conflicts=True,  # two first uses at once: one set of defaults
        )

    @classmethod
    def for_task(cls, task: Task) -> list[FailureMode]:
        """The task's active modes in order; a task that never had a taxonomy gets the defaults."""
        if not cls.objects.filter(task=task).exists():
            cls.seed_defaults(task)
        return list(cls.objects.filter(task=task, active=True))


REVIEWED_SOURCES = [Episode.Source.ONLINE, Episode.Source.EVALUATION]
FAILED = [Episode.Outcome.FAILURE, Episode.Outcome.TIMEOUT]


def reviewable_episodes() -> QuerySet:
    """The episodes annotators may open and label: robots' failed or timed-out episodes, any with an open flag
    (an operator asked), and any labelled before (to revise it). Never demonstrations (the expert's own), and a
    success only when flagged: a label can take an episode out of training, so who may label what is the
    server's decision, not the page's."""
    open_flags = EpisodeFlag.objects.filter(episode=OuterRef("pk"), status=EpisodeFlag.Status.OPEN)
    return (Episode.objects.filter(source__in=REVIEWED_SOURCES)
            .annotate(flagged=Exists(open_flags), labelled=Exists(EpisodeLabel.objects.filter(episode=OuterRef("pk"))))
            .filter(Q(outcome__in=FAILED) | Q(flagged=True) | Q(labelled=True)))


class NotReviewable(Exception):
    """The episode is not one the user may label (outside the review queue, without label_any_episode)."""


def check_reviewable(episode: Episode, user) -> None:
    if user.has_perm("review.label_any_episode"):
        return
    if not reviewable_episodes().filter(pk=episode.pk).exists():
        raise NotReviewable(f"episode {episode.pk} is not in the review queue (only failed, timed-out, flagged or "
                            f"labelled robot episodes are; a {episode.get_source_display()} "
                            f"{episode.get_outcome_display()} is not); a supervisor can label it")


class ClaimHeld(Exception):
    """Someone else is labelling this episode."""


class ClaimLost(Exception):
    """The caller's claim expired (and may have been taken over); nothing was saved."""


def claim_ttl() -> timedelta:
    return timedelta(seconds=settings.REVIEW_CLAIM_SECONDS)


class ReviewClaim(models.Model):
    """An annotator's lease on an episode while labelling it. The unique episode makes a second live claim
    impossible; an abandoned claim expires and the next annotator takes it over."""

    episode = models.OneToOneField(Episode, on_delete=models.CASCADE, related_name="review_claim")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_claims")
    claimed_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.annotator} on episode {self.episode_id}"

    @classmethod
    def claim(cls, episode: Episode, user) -> ReviewClaim:
        """Claim (or renew one's own claim on) the episode; ClaimHeld while someone else's claim is live.

        Each path is one statement that must touch exactly one row: a renewal, a take-over of an expired claim
        (two annotators racing for it queue on the row, and the second finds it live again), or an insert that
        the unique episode lets only one of two racers commit."""
        check_reviewable(episode, user)
        now = timezone.now()
        expires = now + claim_ttl()
        with transaction.atomic():
            if cls.objects.filter(episode=episode, annotator=user).update(expires_at=expires):
                return cls.objects.get(episode=episode)
            if cls.objects.filter(episode=episode, expires_at__lte=now).update(annotator=user, claimed_at=now,
                                                                                expires_at=expires):
                return cls.objects.get(episode=episode)
            try:
                with transaction.atomic():
                    return cls.objects.create(episode=episode, annotator=user, claimed_at=now, expires_at=expires)
            except IntegrityError:
                pass
        holder = cls.objects.filter(episode=episode).select_related("annotator").first()
        if holder is None:  # released between our insert and this read: the caller may simply try again
            raise ClaimHeld(f"episode {episode.pk} was just released; open it again")
        raise ClaimHeld(f"episode {episode.pk} is being labelled by {holder.annotator.get_username()} "
                        f"(their claim lapses at {timezone.localtime(holder.expires_at):%H:%M:%S} unless renewed)")

    @classmethod
    def release(cls, episode: Episode, user) -> None:
        cls.objects.filter(episode=episode, annotator=user).delete()

    @classmethod
    def _held(cls, episode: Episode, user) -> ReviewClaim:
        """The user's claim on the episode, locked for the transaction; ClaimLost without one. A lapsed claim that
        nobody took over is still this annotator's: whoever takes it over must update this row, and waits."""
        claim = cls.objects.select_for_update(no_key=True).filter(episode=episode, annotator=user).first()
        if claim is None:
            raise ClaimLost(f"you do not hold episode {episode.pk} (your claim lapsed and someone else took it, "
                            "or you never opened it); nothing was saved")
        return claim

    @classmethod
    def dismiss_flags(cls, episode: Episode, user, reason: str) -> int:
        """Dismiss the episode's open flags, audited; only while holding its claim, as labelling does. Returns how
        many were dismissed; the claim is released."""
        with transaction.atomic():
            claim = cls._held(episode, user)
            dismissed = 0
            for flag in episode.flags.select_for_update().filter(status=EpisodeFlag.Status.OPEN):
                flag.resolve(user, EpisodeFlag.Status.DISMISSED, reason=reason)
                dismissed += 1
            claim.delete()
        return dismissed

    @classmethod
    def submit_label(cls, episode: Episode, user, *, failure_mode: str, failure_step: int | None, notes: str,
                     disposition: str) -> EpisodeLabel:
        """Store the annotator's label, audited; only while holding a live claim on the episode.

        Relabelling hands the failing segment to the expert (fleet.ingest.relabel_segments); open flags on the
        episode are resolved as labelled; the claim is released; the learner is nudged after commit."""
        _check_label(episode, failure_mode, failure_step, disposition)
        with transaction.atomic():
            claim = cls._held(episode, user)
            previous = EpisodeLabel.objects.filter(episode=episode).values(
                "failure_mode", "failure_step", "disposition", "annotator_id").first()
            label, _ = EpisodeLabel.objects.update_or_create(episode=episode, defaults={
                "annotator": user, "failure_mode": failure_mode, "failure_step": failure_step, "notes": notes,
                "disposition": disposition,
            })
            relabelled = relabel_segments(
                episode, failure_step if disposition == EpisodeLabel.Disposition.RELABEL else None)
            AuditEvent.record(user, "episode.label", episode, reason=notes[:500], details={
                "failure_mode": failure_mode, "failure_step": failure_step, "disposition": disposition,
                "relabelled_steps": relabelled, "previous": previous,
            })
            for flag in episode.flags.filter(status=EpisodeFlag.Status.OPEN):
                flag.resolve(user, EpisodeFlag.Status.LABELLED, reason=f"labelled {failure_mode}")
            claim.delete()
            message = {"label": episode.pk, "episode": episode.pk, "task": episode.task.env_name,
                       "failure_mode": failure_mode, "disposition": disposition,
                       "version": episode.policy_version_id}
            broadcast_on_commit("episode.labelled", message, nudge=(bus.EPISODES_CHANNEL, message))
        return label


def _check_label(episode: Episode, failure_mode: str, failure_step: int | None, disposition: str) -> None:
    """ValueError, saying why, unless the label fits the episode and its task's failure modes."""
    modes = {mode.code for mode in FailureMode.for_task(episode.task)}
    if failure_mode not in modes:
        raise ValueError(f"{failure_mode!r} is not a failure mode of {episode.task}: {', '.join(sorted(modes))}")
    if disposition not in EpisodeLabel.Disposition.values:
        raise ValueError(f"unknown disposition {disposition!r}")
    if failure_step is not None and not 0 <= failure_step < episode.steps:
        raise ValueError(f"the failure step must lie in [0, {episode.steps - 1}], not {failure_step}")
    if disposition == EpisodeLabel.Disposition.RELABEL and failure_step is None:
        raise ValueError("relabelling needs the step where the failure began: set it from the timeline")


class RenderQueueFull(Exception):
    """As many renders as the cap allows are queued or rendering; nothing new was queued (503, try again later)."""

    retry_after = 30


# A queued or rendering replay untouched this long lost its message or its worker: it no longer counts against the
# render cap, and asking for it again queues it as a new render. A capped queue keeps a render waiting far less
# (20 renders of about a minute and a half each under the demo's load).
RENDER_ABANDONED_AFTER = timedelta(hours=1)

# The background worker takes renders a person waits for (and exports) before render-ahead's, whatever came first.
# Celery's Redis transport keeps a list per priority step of a queue and pops 0 first (lower is sooner there), so
# these are the Redis numbers; RabbitMQ delivers the highest priority first (its queues are declared with
# x-max-priority: settings), and render_priority turns them round for it.
RENDER_NOW_PRIORITY = 0
RENDER_AHEAD_PRIORITY = 9


def render_priority(urgent: bool) -> int:
    """The Celery priority of a render on the configured broker: the person's render first."""
    redis_number = RENDER_NOW_PRIORITY if urgent else RENDER_AHEAD_PRIORITY
    return 9 - redis_number if settings.BROKER_IS_AMQP else redis_number


class ReplayVideo(models.Model):
    """An episode's rendered replay: the job's state and progress while it renders, the cached file after."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RENDERING = "rendering", "rendering"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    episode = models.OneToOneField(Episode, primary_key=True, on_delete=models.CASCADE, related_name="replay")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="Share of frames rendered, 0 to 1.")
    error = models.TextField(blank=True)
    path = models.CharField(max_length=300, blank=True, help_text="Its name in storage (core.storage).")
    fps = models.FloatField(null=True, blank=True)
    stride = models.PositiveSmallIntegerField(
        default=1, help_text="Control steps per frame: frame k shows step k * stride, from time k / fps. Replays "
                             "rendered before strides existed drew every step.")
    frames = models.PositiveIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    render_seconds = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    urgent = models.BooleanField(default=False, help_text="A person asked for it: it renders before render-ahead's.")
    # Touched when queued and at every progress step: a job whose worker died stops touching it.
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"replay of episode {self.episode_id}"

    @property
    def file(self) -> Path | None:
        """The file on this host when storage is a folder; None on object storage (core.storage reads it)."""
        return storage.local_path(self.path) if self.path else None

    def as_json(self) -> dict:
        return {"episode": self.episode_id, "status": self.status, "progress": round(self.progress, 3),
                "error": self.error, "fps": self.fps, "stride": self.stride, "frames": self.frames}

    @staticmethod
    def _enqueue(episode_id: int, urgent: bool) -> None:
        from review.tasks import render_replay

        priority = render_priority(urgent)
        transaction.on_commit(lambda: render_replay.apply_async((episode_id,), priority=priority))

    @classmethod
    def in_flight(cls) -> QuerySet:
        """The renders queued or rendering now (abandoned ones aside): what the render cap counts."""
        return cls.objects.filter(status__in=[cls.Status.QUEUED, cls.Status.RENDERING],
                                  heartbeat_at__gte=timezone.now() - RENDER_ABANDONED_AFTER)

    @classmethod
    def check_room(cls, cap: int | None) -> None:
        """RenderQueueFull while `cap` renders are in flight (None: no cap). Inside a transaction it holds the
        render admission lock until the end, so two requests cannot both take the last place."""
        if cap is None:
            return
        locks.hold(locks.RENDERS)
        in_flight = cls.in_flight().count()
        if in_flight >= cap:
            raise RenderQueueFull(f"{in_flight} replays are already queued or rendering (at most {cap} at once), so "
                                  f"no new render was queued; try again in a minute")

    def _adds_render(self, now) -> bool:
        """Whether queueing this replay again adds a render to the queue: its file is gone, or it was abandoned.
        Re-sending a stale job's message adds nothing: the job is already counted."""
        if self.status == self.Status.READY:
            return not self.path or not storage.exists(self.path)
        return self.status in (self.Status.QUEUED, self.Status.RENDERING) and (
            self.heartbeat_at < now - RENDER_ABANDONED_AFTER)

    @classmethod
    def adds_render(cls, episode_id: int) -> bool:
        """Whether asking for this replay now would add a render to the queue; asking for one that is rendered, on
        its way or failed adds nothing."""
        video = cls.objects.filter(pk=episode_id).first()
        return video is None or video._adds_render(timezone.now())

    @classmethod
    def request(cls, episode_id: int, *, cap: int | None = None, ahead: bool = False) -> ReplayVideo:
        """Make sure the episode's replay is rendered or on its way; a failed one waits for `retry`. With `cap`, a
        request that would add a render while `cap` renders are in flight raises RenderQueueFull and queues
        nothing; one that is rendered or on its way is answered as usual. A person's request (not `ahead`) renders
        before render-ahead's, and moves a render-ahead job still queued for this episode to the front."""
        now = timezone.now()
        stale = now - timedelta(seconds=settings.REVIEW_RENDER_STALE_SECONDS)
        urgent = not ahead
        with transaction.atomic():
            video = cls.objects.filter(pk=episode_id).first()
            if video is None:
                cls.check_room(cap)
                video, created = cls.objects.get_or_create(episode_id=episode_id, defaults={"urgent": urgent})
                if created:
                    cls._enqueue(episode_id, urgent)
                    return video
            requeue = None
            if video.status == cls.Status.READY and not (video.path and storage.exists(video.path)):  # cleaned
                requeue = models.Q(status=cls.Status.READY)
            elif video.status in (cls.Status.QUEUED, cls.Status.RENDERING) and video.heartbeat_at < stale:
                # The message was lost or the worker died mid-render: queue it again (the task claims it once).
                requeue = models.Q(status__in=[cls.Status.QUEUED, cls.Status.RENDERING], heartbeat_at__lt=stale)
            if requeue is not None:
                if video._adds_render(now):
                    cls.check_room(cap)
                if cls.objects.filter(requeue, pk=episode_id).update(status=cls.Status.QUEUED, progress=0.0,
                                                                     heartbeat_at=now, urgent=urgent):
                    cls._enqueue(episode_id, urgent)
                    video.refresh_from_db()
            elif urgent and not video.urgent and video.status == cls.Status.QUEUED:
                # Rendered ahead, not started yet, and now a person waits for it: a second message on the first
                # lane. Whichever the worker takes first renders it; the other finds it started and does nothing.
                if cls.objects.filter(pk=episode_id, status=cls.Status.QUEUED, urgent=False).update(urgent=True):
                    cls._enqueue(episode_id, urgent)
                    video.urgent = True
        return video

    @classmethod
    def evict(cls, older_than: timedelta) -> int:
        """Delete replays rendered longer ago than `older_than`, files and rows, except those of episodes under a
        live review claim. Returns how many went; a later request renders the episode again."""
        now = timezone.now()
        claimed = ReviewClaim.objects.filter(episode_id=models.OuterRef("episode_id"), expires_at__gt=now)
        old = cls.objects.filter(~models.Exists(claimed), status=cls.Status.READY, finished_at__lt=now - older_than)
        evicted = 0
        for video in old.only("episode_id", "path").iterator():
            # The same conditions again as it is deleted: a re-render started, or a claim taken, meanwhile keeps it.
            if old.filter(pk=video.pk).delete()[0]:
                if video.path:
                    storage.delete(video.path)
                evicted += 1
        return evicted

    def retry(self, actor, *, cap: int | None = None) -> AuditEvent:
        """Queue a failed render again (the retry button); RenderQueueFull while `cap` renders are in flight."""
        with transaction.atomic():
            self.check_room(cap)
            event = apply_transition(self, verb="replay.retry", field="status", allowed_from={self.Status.FAILED},
                                     to=self.Status.QUEUED, actor=actor, reason=self.error[:500], error="",
                                     progress=0.0, heartbeat_at=timezone.now(), urgent=True)
            self._enqueue(self.episode_id, urgent=True)
        return event

    # The worker's side: conditional updates that must touch exactly one row, so a duplicate message or a
    # render that was re-queued meanwhile never writes over another job's result.

    def start(self) -> bool:
        return bool(ReplayVideo.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RENDERING, progress=0.0, heartbeat_at=timezone.now(),
            attempts=models.F("attempts") + 1))

    def report_progress(self, share: float) -> None:
        ReplayVideo.objects.filter(pk=self.pk, status=self.Status.RENDERING).update(
            progress=share, heartbeat_at=timezone.now())

    def finish(self, path: str, info: dict) -> bool:
        return bool(ReplayVideo.objects.filter(pk=self.pk, status=self.Status.RENDERING).update(
            status=self.Status.READY, progress=1.0, path=path, fps=info["fps"], stride=info["stride"],
            frames=info["frames"],
            width=info["width"], height=info["height"], render_seconds=info["seconds"], error="",
            finished_at=timezone.now(), heartbeat_at=timezone.now()))

    def fail(self, message: str) -> None:
        try:
            apply_transition(self, verb="replay.failed", field="status", allowed_from={self.Status.RENDERING},
                             to=self.Status.FAILED, reason=message[:500], error=message,
                             finished_at=timezone.now(), heartbeat_at=timezone.now())
        except IllegalTransition:
            pass  # re-queued meanwhile by a stale check: that job's outcome counts


class ExportLimitReached(Exception):
    """The person already has as many exports queued or running as they may; nothing was queued (429)."""

    retry_after = 60

    def __init__(self, message: str, running: DatasetExport):
        super().__init__(message)
        self.running = running


# A running export reports progress every few episodes (well under a second apart); one silent this long lost its
# worker. A queued one untouched for RENDER_ABANDONED_AFTER lost its message (it waits behind renders at most).
EXPORT_SILENT_AFTER = timedelta(minutes=5)


def export_workspace() -> Path:
    """Where export jobs build their folders before zipping: beside the zips in a storage folder (moved into place
    by rename), or a local folder of the worker's host when storage is a bucket."""
    return storage.local_path("exports") or Path(settings.STORAGE_CACHE_DIR) / "exports"


class DatasetExport(models.Model):
    """A person's export of labelled episodes as a LeRobot dataset (review.export), built by a Celery job on the
    `background` queue: its state and progress while it runs, then the zip in storage, downloadable by its owner
    and supervisors for REVIEW_EXPORT_KEEP_DAYS. The row stays after the file is deleted (expired): who exported
    which training data, and when."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        READY = "ready", "ready"
        FAILED = "failed", "failed"
        EXPIRED = "expired", "expired"

    ACTIVE = [Status.QUEUED, Status.RUNNING]

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                     related_name="dataset_exports")
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                             help_text="Only this task's episodes; empty for every task.")
    dispositions = models.JSONField(default=list, help_text="The label dispositions exported.")
    format = models.CharField(max_length=8, choices=[("v3.0", "LeRobot v3.0"), ("v2.1", "LeRobot v2.1")],
                              default="v3.0", help_text="The LeRobot dataset format (review.export).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="Share of the job done, 0 to 1.")
    episodes = models.PositiveIntegerField(default=0, help_text="Matching episodes when requested; exported ones "
                                                                "once ready.")
    path = models.CharField(max_length=300, blank=True, help_text="The zip's name in storage (core.storage).")
    size = models.BigIntegerField(null=True, blank=True, help_text="The zip's bytes.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Touched when queued and at every progress step: a job whose worker died stops touching it.
    heartbeat_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["requested_by", "status"])]
        permissions = [("download_any_export", "Can see and download other people's dataset exports")]

    def __str__(self) -> str:
        return f"dataset export {self.pk} by {self.requested_by}"

    @property
    def file(self) -> Path | None:
        """The file on this host when storage is a folder; None on object storage (core.storage reads it)."""
        return storage.local_path(self.path) if self.path else None

    @property
    def filename(self) -> str:
        return f"sopweb-labelled-episodes-{self.pk}.zip"

    def as_json(self) -> dict:
        return {"id": self.pk, "status": self.status, "progress": round(self.progress, 3), "episodes": self.episodes,
                "size": self.size, "error": self.error,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}

    @classmethod
    def check_room(cls, user, limit: int) -> None:
        """ExportLimitReached while the user has `limit` exports queued or running (after failing those whose worker
        died). Inside a transaction it holds the user's export lock until the end, so two requests cannot both
        take the last place."""
        locks.hold(locks.exports_of(user.pk))
        cls.fail_stale(requested_by=user)
        active = list(cls.objects.filter(requested_by=user, status__in=cls.ACTIVE).order_by("created_at")[:limit])
        if len(active) >= limit:
            raise ExportLimitReached(f"you already have {len(active)} export{'s' if len(active) > 1 else ''} queued "
                                     f"or running (at most {limit} at once); wait for it to finish", active[0])

    @classmethod
    def create_for(cls, user, *, task: Task | None, dispositions: list[str], episodes: int,
                   limit: int, format: str = "v3.0") -> DatasetExport:
        """A new queued export of the user's, within their limit (ExportLimitReached otherwise)."""
        with transaction.atomic():
            cls.check_room(user, limit)
            return cls.objects.create(requested_by=user, task=task, dispositions=list(dispositions),
                                      episodes=episodes, format=format)

    @classmethod
    def fail_stale(cls, **filters) -> int:
        """Fail the exports (among `filters`) whose worker died or whose message was lost. Returns how many."""
        now = timezone.now()
        rows = cls.objects.filter(**filters)
        silent = rows.filter(status=cls.Status.RUNNING, heartbeat_at__lt=now - EXPORT_SILENT_AFTER).update(
            status=cls.Status.FAILED, finished_at=now,
            error=f"the export stopped: its worker made no progress for {EXPORT_SILENT_AFTER.seconds // 60} minutes")
        lost = rows.filter(status=cls.Status.QUEUED, heartbeat_at__lt=now - RENDER_ABANDONED_AFTER).update(
            status=cls.Status.FAILED, finished_at=now,
            error=f"no worker started the export within {RENDER_ABANDONED_AFTER.seconds // 60} minutes")
        return silent + lost

    @classmethod
    def expire(cls, older_than: timedelta) -> int:
        """Delete the zips of exports finished longer ago than `older_than` (their rows stay, expired), and the
        half-built folders of jobs that are no longer running. Returns how many exports expired."""
        expired = 0
        for export in cls.objects.filter(status=cls.Status.READY, finished_at__lt=timezone.now() - older_than):
            if cls.objects.filter(pk=export.pk, status=cls.Status.READY).update(status=cls.Status.EXPIRED, path=""):
                if export.path:
                    storage.delete(export.path)
                expired += 1
        folder = export_workspace()
        running = set(cls.objects.filter(status=cls.Status.RUNNING).values_list("pk", flat=True))
        for partial in folder.glob("export-*.partial"):
            number = partial.name.removeprefix("export-").removesuffix(".partial")
            if number.isdigit() and int(number) not in running:
                shutil.rmtree(partial, ignore_errors=True)
        return expired

    # The worker's side: conditional updates that must touch exactly one row, so a duplicate message, or a job
    # failed meanwhile as stale, never writes over another outcome.

    def start(self) -> bool:
        now = timezone.now()
        return bool(DatasetExport.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, progress=0.0, started_at=now, heartbeat_at=now))

    def report_progress(self, share: float) -> bool:
        """False once the job is no longer running (failed meanwhile): the worker stops."""
        return bool(DatasetExport.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            progress=share, heartbeat_at=timezone.now()))

    def finish(self, path: str, size: int, episodes: int) -> bool:
        now = timezone.now()
        return bool(DatasetExport.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            status=self.Status.READY, progress=1.0, path=path, size=size, episodes=episodes, error="",
            finished_at=now, heartbeat_at=now))

    def fail(self, message: str) -> bool:
        now = timezone.now()
        return bool(DatasetExport.objects.filter(pk=self.pk, status__in=self.ACTIVE).update(
            status=self.Status.FAILED, error=message, finished_at=now, heartbeat_at=now))
