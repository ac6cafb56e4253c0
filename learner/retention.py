"""Checkpoint retention: in continuous mode the learner publishes a version every few seconds (about 100 MB of
checkpoints an hour at 321 KB each), and nothing else ever deletes them.

Kept, always: every version robots may run or be sent back to — candidates, running evaluations (with their
baselines), canaries, the deployed version, any version assigned to a robot in the fleet, the versions the fleet
ran before the deployed one (the targets of successive roll-backs, `CHECKPOINT_KEEP_FLEET` of them), and the base
versions of training runs — plus the newest `CHECKPOINT_KEEP_LAST` versions whatever their state (a supervisor may
still nominate a recent checkpoint). Everything older loses its files; its row stays, for its episodes, lineage
and audit, marked with `checkpoint_removed_at`, and `PolicyVersion.advance` refuses to make it runnable again.

It runs under the rollout lock, so no decision can assign a version while retention chooses. Versions published
meanwhile (publishing takes its own lock) are out of reach: only numbers up to the newest one seen at the start
are considered. Files are deleted after the marks commit; a crash in between leaves directories that the next
run finds (it lists the checkpoint directory, which retention keeps small) and deletes.
"""
from __future__ import annotations

import logging
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from core import storage
from core.locks import rollout_lock
from fleet.models import Robot
from learner import checkpoint_store
from learner.models import PolicyVersion, TrainingRun
from learner.signals import checkpoints_needed

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "policies"  # where publish_version writes: policies/<name>


def protected_versions(ceiling: int, keep_last: int, keep_fleet: int) -> set[int]:
    """Ids of the versions whose checkpoints must stay, among those numbered up to `ceiling`: runnable ones, those
    robots are assigned, training runs' bases, the newest `keep_last`, and whatever the apps above the learner
    still need (receivers of learner.signals.checkpoints_needed: governance keeps evaluation baselines and the
    last `keep_fleet` fleet versions to roll back to)."""
    keep = set(PolicyVersion.objects.filter(state__in=PolicyVersion.RUNNABLE).values_list("id", flat=True))
    keep |= set(Robot.objects.filter(retired=False).exclude(policy_version=None)
                .values_list("policy_version_id", flat=True))
    keep |= set(TrainingRun.objects.exclude(base_version=None).values_list("base_version_id", flat=True))
    keep |= set(PolicyVersion.objects.filter(number__gt=ceiling - keep_last).values_list("id", flat=True))
    for _, needed in checkpoints_needed.send(sender=PolicyVersion, keep_fleet=keep_fleet):
        keep |= set(needed)
    return keep


def prune_checkpoints(keep_last: int | None = None, keep_fleet: int | None = None) -> list[PolicyVersion]:
    """Delete the checkpoints retention does not protect. Returns the versions newly marked removed."""
    keep_last = settings.CHECKPOINT_KEEP_LAST if keep_last is None else keep_last
    keep_fleet = settings.CHECKPOINT_KEEP_FLEET if keep_fleet is None else keep_fleet
    with transaction.atomic():
        rollout_lock()
        ceiling = PolicyVersion.objects.aggregate(top=models.Max("number"))["top"] or 0
        keep = protected_versions(ceiling, keep_last, keep_fleet)
        doomed = list(PolicyVersion.objects.filter(checkpoint_removed_at=None, number__lte=ceiling)
                      .exclude(id__in=keep))
        PolicyVersion.objects.filter(id__in=[v.id for v in doomed]).update(checkpoint_removed_at=timezone.now())
    delete_removed_files()
    if doomed:
        log.info("retention removed the checkpoints of %d versions (%s)", len(doomed),
                 ", ".join(str(v) for v in doomed[:10]) + (" ..." if len(doomed) > 10 else ""))
    return doomed


def delete_removed_files() -> int:
    """Delete the checkpoint folders under policies/ (in storage) that belong to removed versions only. Returns how
    many."""
    present = set(storage.folders(CHECKPOINT_DIR))
    if not present:
        return 0
    removed = set(PolicyVersion.objects.filter(checkpoint_path__in=present)
                  .exclude(checkpoint_removed_at=None).values_list("checkpoint_path", flat=True))
    still_used = set(PolicyVersion.objects.filter(checkpoint_path__in=removed, checkpoint_removed_at=None)
                     .values_list("checkpoint_path", flat=True))  # a path shared with a kept version stays
    deleted = 0
    for path in sorted(removed - still_used):
        if PurePosixPath(path).parts != (CHECKPOINT_DIR, PurePosixPath(path).name):
            continue  # only ever policies/<name>, the form publish_version writes
        try:
            checkpoint_store.delete(path)
            deleted += 1
        except Exception:  # noqa: BLE001 — the next run tries again; the row already says removed
            log.exception("could not delete the removed checkpoint %s", path)
    return deleted
