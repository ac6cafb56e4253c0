"""Checkpoint retention: in continuous mode the learner publishes a version every few seconds (about 100 MB of
checkpoints an hour at 321 KB each), and nothing else ever deletes them.

Kept, always: every version robots may run or be sent back to — candidates, evaluations (with their baselines),
canaries, the deployed version, any version assigned to a robot, the versions the fleet ran before the deployed one (the targets of
successive roll-backs, `CHECKPOINT_KEEP_FLEET` of them), and the base versions of training runs — plus the newest
`CHECKPOINT_KEEP_LAST` versions whatever their state (a supervisor may still nominate a recent checkpoint).
Everything older loses its files; its row stays, for its episodes, lineage and audit, marked with
`checkpoint_removed_at`, and `PolicyVersion.advance` refuses to make it runnable again.

It runs under the rollout lock, so no decision can assign a version while its files are being chosen for
deletion, and deletes files only after the rows that say so have committed (a crash in between leaves files that
the next run finds marked and deletes).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from learner.models import PolicyVersion, TrainingRun, rollout_lock

log = logging.getLogger(__name__)


def protected_versions(keep_last: int, keep_fleet: int) -> set[int]:
    """Ids of the versions whose checkpoints must stay."""
    from fleet.models import Robot, Rollout
    from governance.models import Evaluation

    keep = set(PolicyVersion.objects.filter(state__in=PolicyVersion.RUNNABLE).values_list("id", flat=True))
    keep |= set(Robot.objects.exclude(policy_version=None).values_list("policy_version_id", flat=True))
    keep |= set(TrainingRun.objects.exclude(base_version=None).values_list("base_version_id", flat=True))
    for pair in Evaluation.objects.filter(finished_at=None).values_list("candidate_id", "baseline_id"):
        keep |= set(pair) - {None}  # an open evaluation runs its baseline too, even once superseded
    keep |= set(PolicyVersion.objects.order_by("-number").values_list("id", flat=True)[:keep_last])
    fleet = (Rollout.objects.filter(stage=Rollout.Stage.FLEET, version__state=PolicyVersion.State.SUPERSEDED)
             .order_by("-created_at").values_list("version_id", flat=True))
    previous = []
    for version_id in fleet.iterator():
        if version_id not in previous:
            previous.append(version_id)
        if len(previous) == keep_fleet:
            break
    return keep | set(previous)


def prune_checkpoints(keep_last: int | None = None, keep_fleet: int | None = None) -> list[PolicyVersion]:
    """Delete the checkpoints retention does not protect. Returns the versions whose files went."""
    keep_last = settings.CHECKPOINT_KEEP_LAST if keep_last is None else keep_last
    keep_fleet = settings.CHECKPOINT_KEEP_FLEET if keep_fleet is None else keep_fleet
    with transaction.atomic():
        rollout_lock()
        keep = protected_versions(keep_last, keep_fleet)
        doomed = list(PolicyVersion.objects.filter(checkpoint_removed_at=None).exclude(id__in=keep))
        PolicyVersion.objects.filter(id__in=[v.id for v in doomed]).update(checkpoint_removed_at=timezone.now())
    # After the commit. Every removed version's directory goes, so files that a crash left behind after an earlier
    # run had marked their rows go now (a missing directory is no error).
    root = Path(settings.STORAGE_DIR).resolve()
    for path in PolicyVersion.objects.exclude(checkpoint_removed_at=None).values_list("checkpoint_path", flat=True):
        target = (root / path).resolve()
        if root in target.parents:  # never the storage root itself, nor anything outside it
            shutil.rmtree(target, ignore_errors=True)
    if doomed:
        log.info("retention removed the checkpoints of %d versions (%s)", len(doomed),
                 ", ".join(str(v) for v in doomed[:10]) + (" ..." if len(doomed) > 10 else ""))
    return doomed
