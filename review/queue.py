"""The annotators' queue: failed, timed-out and flagged episodes (and any labelled one, to revise), in the order
they should be labelled.

Episodes with an open flag come first (an operator asked), then unlabelled before labelled, then the chosen
order (newest policy versions first by default). Demonstrations never enter: they are the expert's own.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from fleet.models import Episode
from review.models import ClaimHeld, EpisodeFlag, NotReviewable, ReviewClaim, reviewable_episodes

ORDERS = {
    "version": ("Newest policy versions first", [F("policy_version__number").desc(nulls_last=True), "-finished_at"]),
    "newest": ("Newest episodes first", ["-finished_at"]),
    "oldest": ("Oldest episodes first", ["finished_at"]),
}


@dataclass(frozen=True)
class QueueFilter:
    task: int | None = None
    robot: int | None = None
    version: int | None = None  # a PolicyVersion number
    flag_reason: str = ""
    status: str = "unlabelled"  # unlabelled | labelled | all
    order: str = "version"


def queue(f: QueueFilter = QueueFilter()) -> QuerySet:
    live_claim = ReviewClaim.objects.filter(episode=OuterRef("pk"), expires_at__gt=timezone.now())
    # A success whose flag was dismissed leaves the queue; one that was labelled stays with the labelled.
    rows = (reviewable_episodes()
            .annotate(claimed_by=Subquery(live_claim.values("annotator__username")[:1]))
            .select_related("task", "robot", "policy_version", "label"))
    if f.task:
        rows = rows.filter(task_id=f.task)
    if f.robot:
        rows = rows.filter(robot_id=f.robot)
    if f.version:
        rows = rows.filter(policy_version__number=f.version)
    if f.flag_reason:
        rows = rows.filter(Exists(EpisodeFlag.objects.filter(episode=OuterRef("pk"),
                                                             reason__icontains=f.flag_reason)))
    if f.status == "unlabelled":
        rows = rows.filter(labelled=False)
    elif f.status == "labelled":
        rows = rows.filter(labelled=True)
    return rows.order_by("-flagged", "labelled", *ORDERS[f.order][1], "-id")


def claim_next(user, f: QueueFilter, skip=()) -> Episode | None:
    """Claim the first unlabelled episode of the queue that nobody else is labelling (or the one this user
    already holds). Racing annotators each get a different one: a lost race moves on to the next candidate."""
    candidates = (queue(QueueFilter(**{**f.__dict__, "status": "unlabelled"}))
                  .filter(Q(claimed_by=None) | Q(claimed_by=user.get_username())).exclude(pk__in=list(skip)))
    for _ in range(5):  # each round: the next few candidates; almost always the first one is free
        batch = list(candidates[:10])
        if not batch:
            return None
        for episode in batch:
            try:
                ReviewClaim.claim(episode, user)
            except (ClaimHeld, NotReviewable):  # taken, or its flag dismissed, meanwhile
                continue
            return episode
    return None


def upcoming(f: QueueFilter = QueueFilter(), count: int = 3) -> list[int]:
    """The ids of the next unclaimed unlabelled episodes: what to render ahead."""
    return list(queue(QueueFilter(**{**f.__dict__, "status": "unlabelled"})).filter(claimed_by=None)
                .values_list("pk", flat=True)[:count])
