"""Evaluation by the fleet, from the actor's side: at an episode start a robot claims a pending evaluation item
for one of its tasks (SKIP LOCKED: two robots never take the same one) and runs it in place of an online episode;
the result completes the item, and the last item of an evaluation hands it over to governance.finish_evaluations.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.events import broadcast_on_commit
from fleet.models import Episode
from governance import mode as rollout_mode
from governance.models import Evaluation, EvaluationItem
from learner.models import PolicyVersion

log = logging.getLogger(__name__)
# A claimed item whose episode never came back (its worker died) is claimable again after this: longer than the
# actor task's hard time limit (fleet.run_episode, 150 s), so a live episode is never run twice.
CLAIM_TIMEOUT = timedelta(seconds=180)


def claim(robot, tasks) -> EvaluationItem | None:
    """The oldest pending evaluation item on one of `tasks`, now claimed by `robot`; None when there is none. A
    robot holds at most one: an item it claimed and never ran (its plan fell through: a failed download, an episode
    aborted at its start) is handed to it again before any other, its claim's time unchanged.

    Only items a running evaluation needs are worth robot time: its candidate's, and its baseline's (even if that
    baseline was superseded meanwhile — the comparison is with it). A rejected candidate's baseline items wait.
    While deployments are frozen none is handed out: robots run only the version they are assigned (the cached
    mode: a robot starting an episode within MODE_CACHE_SECONDS of a freeze may still run one).
    """
    if rollout_mode.current().frozen:
        return None
    stale = timezone.now() - CLAIM_TIMEOUT
    running = Evaluation.objects.filter(finished_at=None, candidate__state=PolicyVersion.State.EVALUATING)
    needed = Q(version__state=PolicyVersion.State.EVALUATING) | Q(version__in=running.values("baseline"))
    with transaction.atomic():
        pending = (EvaluationItem.objects.select_for_update(skip_locked=True, no_key=True, of=("self",))
                   .filter(needed, episode=None, task__in=tasks).select_related("version", "task"))
        held = pending.filter(robot=robot, claimed_at__gte=stale).order_by("pk").first()
        if held is not None:
            return held  # its claim's clock runs on from the first hand: a robot that never runs it loses it
        item = pending.filter(Q(claimed_at=None) | Q(claimed_at__lt=stale)).order_by("pk").first()
        if item is None:
            return None
        item.robot, item.claimed_at = robot, timezone.now()
        item.save(update_fields=["robot", "claimed_at"])
    return item


def release(item: EvaluationItem) -> None:
    """Give the item back (the episode was aborted, or someone took over): another robot runs it again. Only the
    robot's own claim goes: another robot that took the item after this claim went stale keeps it."""
    EvaluationItem.objects.filter(pk=item.pk, episode=None, robot_id=item.robot_id).update(robot=None,
                                                                                          claimed_at=None)


def unloadable(item: EvaluationItem, error: Exception) -> bool:
    """The item's checkpoint cannot be loaded (missing, corrupt). A candidate is rejected with an alert — else it
    would keep robots busy failing — and True is returned; otherwise (the baseline) the item is released."""
    from core.audit import IllegalTransition
    from governance.decisions import reject
    from governance.models import Alert

    release(item)
    if item.version.state != PolicyVersion.State.EVALUATING:
        return False
    reason = f"automatic: its checkpoint cannot be loaded ({error})"
    try:
        with transaction.atomic():
            reject(item.version, None, reason=reason)
            Alert.raise_alert(f"{item.version} was rejected: its checkpoint cannot be loaded ({error}).",
                              level=Alert.Level.WARNING, version=item.version)
    except IllegalTransition:
        pass  # another robot found it first
    return True


def counts(episode: Episode) -> bool:
    """An evaluation result counts only if the policy ran alone to the end of the episode."""
    return episode.outcome != Episode.Outcome.ABORTED and episode.intervention_steps == 0


def record(item: EvaluationItem, episode: Episode) -> bool:
    """The item's episode was ingested: complete the item with it, or release it if the result cannot count."""
    if not counts(episode):
        release(item)
        return False
    with transaction.atomic():
        if not EvaluationItem.objects.filter(pk=item.pk, episode=None).update(episode=episode):
            return False  # completed by a robot that claimed it after ours went stale
        broadcast_on_commit("evaluation.progress", {"version": item.version_id, "task": item.task.env_name,
                                                    "seed": item.seed, "episode": episode.pk})
        involved = (Evaluation.objects.filter(finished_at=None, candidate__state=PolicyVersion.State.EVALUATING)
                    .filter(Q(candidate=item.version_id) | Q(baseline=item.version_id)))
        if any(done >= needed for done, needed in (e.progress() for e in involved)):
            from governance.tasks import finish_evaluations

            transaction.on_commit(finish_evaluations.delay)
    return True


def finish_complete() -> list[Evaluation]:
    """Finish every running evaluation whose episodes are all in (from a task; also run by the periodic check)."""
    finished = []
    for evaluation in Evaluation.objects.filter(finished_at=None, candidate__state=PolicyVersion.State.EVALUATING):
        done, needed = evaluation.progress()
        if done >= needed and finish(evaluation):
            finished.append(evaluation)
    return finished


def finish(evaluation: Evaluation) -> bool:
    """evaluating -> awaiting approval, with the comparison in the audit row; then the auto-canary rule may act."""
    from core.audit import IllegalTransition
    from governance import rules
    from governance.analysis import comparison

    try:
        with transaction.atomic():
            # A conditional update: when two checks race, exactly one finishes it.
            if not Evaluation.objects.filter(pk=evaluation.pk, finished_at=None).update(finished_at=timezone.now()):
                return False
            figures = comparison(evaluation)
            overall = figures["overall"]["candidate"]
            evaluation.candidate.advance("finish_evaluation", reason=(
                f"evaluated on {evaluation.episodes_per_task} held-out seed(s) per task: "
                f"{overall['successes']}/{overall['episodes']} successes"), details={"figures": figures})
    except IllegalTransition:
        return False  # rejected meanwhile
    from governance.decisions import announce

    announce(evaluation.candidate, "finish_evaluation", None, "", notice=False)
    rules.after_evaluation(evaluation, figures)
    return True
