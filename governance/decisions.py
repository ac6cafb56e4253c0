"""The decisions that move a policy version towards the robots, or away from them: nominate, evaluate, approve to
a canary, promote, reject, roll back, redeploy a superseded version. Supervisors make them through POST views,
rules and the canary check through Celery tasks; all of them come here.

Each decision is one transaction under the rollout lock (core.locks.rollout_lock): it checks the version's
state afresh, moves it with PolicyVersion.advance (an audit row carrying the figures the decision was made on)
and moves robots and rollouts with it. Two supervisors acting at once queue on the lock: the first decides, the
second finds the version moved and gets IllegalTransition saying so, and nothing of its own happens.

While deployments are frozen (governance.mode) nothing moves towards the robots: deploying, approving a canary and
promoting are refused, read from the row under the same lock. Roll backs are not: they return robots to a version
the fleet ran before, which is what a freeze during an incident is for.
"""
from __future__ import annotations

import math

from django.conf import settings
from django.db import transaction

from core.audit import IllegalTransition
from core.events import broadcast_on_commit
from core.locks import rollout_lock
from core.models import AuditEvent
from fleet import control
from fleet.models import Robot, Task
from governance import mode as rollout_mode
from governance.analysis import canary_analysis, comparison, online_comparison
from governance.models import Alert, Evaluation, EvaluationItem, Rollout
from learner.models import PolicyVersion

State = PolicyVersion.State
# What each decision is called on pages, in messages and in the live notice every dashboard shows.
WORDS = {"nominate": "nominated", "start_evaluation": "started evaluating", "finish_evaluation": "evaluated",
         "approve_canary": "approved to a canary",
         "promote": "promoted to the whole fleet", "reject": "rejected", "roll_back": "rolled back",
         "redeploy": "redeployed to the whole fleet"}


def deployed_version() -> PolicyVersion | None:
    return PolicyVersion.deployed()


def active_canary() -> Rollout | None:
    return (Rollout.objects.filter(stage=Rollout.Stage.CANARY, status=Rollout.Status.ACTIVE,
                                   version__state=State.CANARY).select_related("version").first())


def latest_evaluation(version: PolicyVersion) -> Evaluation | None:
    return version.evaluations.select_related("candidate", "baseline").order_by("-created_at").first()


def _check(version: PolicyVersion, verb: str) -> None:
    """Under the rollout lock: refuse, with a message a person understands, if the version has moved on."""
    version.refresh_from_db()
    allowed_from, _ = PolicyVersion.TRANSITIONS[verb]
    if version.state not in allowed_from:
        needs = " or ".join(sorted(State(s).label for s in allowed_from))
        raise IllegalTransition(f"cannot {verb.replace('_', ' ')} {version}: it is {version.get_state_display()} "
                                f"now (it may just have been decided by someone else); this needs {needs}")


def announce(version: PolicyVersion, verb: str, actor, reason: str, notice: bool = True) -> None:
    """Every dashboard hears of the decision once it commits: the rollout pages refresh, the others show a notice."""
    broadcast_on_commit("rollout.decision", {"version": version.pk, "number": version.number, "decision": verb,
                                             "state": version.state})
    if notice:
        who = actor.get_username() if actor is not None else "rule"
        message = f"{who}: {version} {WORDS[verb]}" + (f" — {reason}" if reason else "")
        broadcast_on_commit("alert", {"message": message, "level": "info"})


def deploy_to_fleet(version: PolicyVersion, actor=None, reason: str = "", verb: str = "deploy",
                    details: dict | None = None, restoring: bool = False) -> AuditEvent:
    """Continuous mode (SOP's own), first deployment and promotion (verb "promote"): this version runs on every
    robot from its next episode; the version deployed before it is superseded, its own canary (if any) ends
    promoted. One transaction: all of it or none. Refused while deployments are frozen, unless it is `restoring`
    a version the fleet ran before (a roll back)."""
    with transaction.atomic():
        rollout_lock()
        if not restoring:
            rollout_mode.require_unfrozen(f"deploy {version}")
        event = version.advance(verb, actor, reason=reason, details=details)
        for previous in PolicyVersion.objects.filter(state=State.DEPLOYED).exclude(pk=version.pk):
            previous.advance("supersede", actor, reason=f"replaced by {version}")
        for own in Rollout.objects.filter(status=Rollout.Status.ACTIVE, version=version):
            own.end(Rollout.Status.PROMOTED, actor, reason=reason)
        for other in Rollout.objects.filter(status=Rollout.Status.ACTIVE).exclude(version=version):
            other.end(Rollout.Status.SUPERSEDED, actor, reason=f"replaced by {version}")  # audited, each
        robots = list(Robot.objects.filter(retired=False))
        rollout = Rollout.objects.create(version=version, stage=Rollout.Stage.FLEET, requested_by=actor,
                                         approved_by=actor, reason=reason)
        rollout.robots.set(robots)
        for robot in robots:
            control.assign_version(robot, version, actor, reason=reason or "deployed to the fleet")
    return event


def join_fleet_version(robot: Robot, actor=None) -> None:
    """A robot just added runs the version the fleet runs, if any, and joins its rollout (never a canary's). Under
    the rollout lock, so a deployment in flight either sees the new robot or is seen by it (the robot's row is not
    yet committed; the lock is taken before the deployed version is read). Receives fleet.control.robot_added."""
    rollout_lock()
    deployed = PolicyVersion.deployed()
    if deployed is None:
        return
    control.assign_version(robot, deployed, actor, reason="a new robot runs the fleet's version")
    for rollout in Rollout.objects.filter(status=Rollout.Status.ACTIVE, stage=Rollout.Stage.FLEET, version=deployed):
        rollout.robots.add(robot)


def _figures(version: PolicyVersion) -> dict | None:
    evaluation = latest_evaluation(version)
    return comparison(evaluation) if evaluation is not None else None


def nominate(version: PolicyVersion, actor, reason: str = "", evaluate: bool = True) -> PolicyVersion:
    """A checkpoint becomes a candidate and, unless told otherwise, its evaluation by the fleet starts at once."""
    with transaction.atomic():
        rollout_lock()
        _check(version, "nominate")
        version.advance("nominate", actor, reason=reason)
        if evaluate:
            start_evaluation(version, actor, reason="evaluation of the nominated candidate")
    announce(version, "nominate", actor, reason)
    return version


def start_evaluation(version: PolicyVersion, actor, reason: str = "", episodes_per_task: int | None = None
                     ) -> Evaluation:
    """Queue the candidate's evaluation episodes (and the deployed version's on the same seeds, where it has none)
    for the fleet: held-out seeds, every enabled task that a robot in the fleet runs."""
    episodes = episodes_per_task or settings.GOVERNANCE_EVALUATION_EPISODES
    tasks = list(Task.objects.filter(enabled=True, robots__retired=False).distinct().order_by("env_name"))
    if not tasks:
        raise IllegalTransition("no robot in the fleet runs an enabled task: there is nothing to evaluate on")
    with transaction.atomic():
        rollout_lock()
        _check(version, "start_evaluation")
        baseline = deployed_version()
        version.advance("start_evaluation", actor, reason=reason, details={
            "tasks": [t.env_name for t in tasks], "episodes_per_task": episodes,
            "deployed": baseline.number if baseline else None})
        evaluation = Evaluation.objects.create(candidate=version, baseline=baseline, episodes_per_task=episodes,
                                               requested_by=actor if actor is not None else None)
        evaluation.tasks.set(tasks)
        versions = evaluation.versions()
        # Seed by seed, so that the paired episodes of both versions finish close together.
        EvaluationItem.objects.bulk_create(
            [EvaluationItem(version=v, task=t, seed=s) for s in evaluation.seeds for t in tasks for v in versions],
            ignore_conflicts=True)  # the deployed version may have run these seeds for an earlier candidate
    return evaluation


def choose_canary_robots(robots=None, share: float | None = None) -> list[Robot]:
    """An explicit set of robots, or a share of the fleet (started robots first, so the canary gets data soon).
    At least one robot stays on the deployed version: it is what the canary is compared with."""
    fleet = list(Robot.objects.filter(retired=False).order_by("-enabled", "name"))
    if robots:
        ids = {r.pk for r in robots}
        chosen = [r for r in fleet if r.pk in ids]
        if len(chosen) != len(ids):
            raise IllegalTransition("a chosen robot is not in the fleet (removed meanwhile?)")
    else:
        share = share or settings.GOVERNANCE_CANARY_SHARE
        chosen = fleet[:max(1, math.ceil(share * len(fleet)))]
    if not chosen:
        raise IllegalTransition("the fleet has no robots to run a canary")
    if len(chosen) >= len(fleet):
        raise IllegalTransition(f"a canary must leave at least one of the fleet's {len(fleet)} robot(s) on the "
                                "deployed version to compare with; choose fewer robots, or promote instead")
    return chosen


def approve_canary(version: PolicyVersion, actor, reason: str = "", robots=None,
                   share: float | None = None) -> Rollout:
    """The candidate runs on a subset of robots; the rest keep the deployed version."""
    with transaction.atomic():
        rollout_lock()
        _check(version, "approve_canary")
        rollout_mode.require_unfrozen(f"approve a canary of {version}")
        if deployed_version() is None:
            raise IllegalTransition("nothing is deployed to compare a canary with: promote to the whole fleet instead")
        running = active_canary()
        if running is not None:
            raise IllegalTransition(f"{running.version} is in canary already: promote it or roll it back first")
        chosen = choose_canary_robots(robots, share)
        version.advance("approve_canary", actor, reason=reason, details={
            "robots": [r.name for r in chosen], "share": share if not robots else None,
            "figures": _figures(version)})
        rollout = Rollout.objects.create(version=version, stage=Rollout.Stage.CANARY, requested_by=actor,
                                         approved_by=actor, reason=reason)
        rollout.robots.set(chosen)
        for robot in chosen:
            control.assign_version(robot, version, actor, reason=f"canary of {version}")
    announce(version, "approve_canary", actor, f"{len(chosen)} robot(s)" + (f"; {reason}" if reason else ""))
    return rollout


def promote(version: PolicyVersion, actor, reason: str = "") -> PolicyVersion:
    """The candidate (in canary, or straight from approval) runs on every robot; the deployed one is superseded."""
    with transaction.atomic():
        rollout_lock()
        _check(version, "promote")
        rollout_mode.require_unfrozen(f"promote {version}")
        running = active_canary()
        if running is not None and running.version_id != version.pk:
            raise IllegalTransition(f"{running.version} is in canary: promote it or roll it back first")
        details = {"figures": _figures(version)}
        if running is not None:
            details["canary"] = canary_analysis(running)
        deploy_to_fleet(version, actor, reason=reason, verb="promote", details=details)
    announce(version, "promote", actor, reason)
    return version


def reject(version: PolicyVersion, actor, reason: str = "") -> PolicyVersion:
    """The candidate goes no further; its evaluation episodes not yet run are dropped."""
    with transaction.atomic():
        rollout_lock()
        _check(version, "reject")
        version.advance("reject", actor, reason=reason, details={"figures": _figures(version)})
        EvaluationItem.objects.filter(version=version, episode=None).delete()
    announce(version, "reject", actor, reason)
    return version


def previous_fleet_version(version: PolicyVersion) -> PolicyVersion | None:
    """The version the whole fleet ran before `version`: the newest fleet rollout that ended superseded (not rolled
    back) whose version is still merely superseded."""
    rollout = (Rollout.objects.filter(stage=Rollout.Stage.FLEET, status=Rollout.Status.SUPERSEDED,
                                      version__state=State.SUPERSEDED)
               .exclude(version=version).select_related("version").order_by("-created_at").first())
    return rollout.version if rollout else None


def checkpoints_needed(keep_fleet: int, **kwargs) -> set[int]:
    """What retention must keep for governance: the baselines robots still run for unfinished evaluations (as
    governance.evaluation.claim counts them) and the last `keep_fleet` versions the whole fleet ran before the
    deployed one (roll-back targets). Receives learner.signals.checkpoints_needed."""
    running = Evaluation.objects.filter(finished_at=None, candidate__state=State.EVALUATING)
    keep = {baseline for baseline in running.values_list("baseline_id", flat=True) if baseline is not None}
    fleet = (Rollout.objects.filter(stage=Rollout.Stage.FLEET, version__state=State.SUPERSEDED)
             .order_by("-created_at").values_list("version_id", flat=True))
    previous: list[int] = []
    for version_id in fleet.iterator():
        if version_id not in previous:
            previous.append(version_id)
        if len(previous) == keep_fleet:
            break
    return keep | set(previous)


def roll_back(version: PolicyVersion, actor, reason: str = "", analysis: dict | None = None) -> PolicyVersion:
    """A canary: its robots return to the deployed version. The deployed version: the whole fleet returns to the
    version it ran before. `analysis` is the automatic canary check's verdict, when it is the one deciding."""
    with transaction.atomic():
        rollout_lock()
        _check(version, "roll_back")
        own_rollouts = list(Rollout.objects.filter(version=version, status=Rollout.Status.ACTIVE))
        if version.state == State.CANARY:
            deployed = deployed_version()
            canary = next((r for r in own_rollouts if r.stage == Rollout.Stage.CANARY), None)
            details = {"canary": analysis or (canary_analysis(canary) if canary else None),
                       "returns_to": deployed.number if deployed else None}
            version.advance("roll_back", actor, reason=reason, details=details)
            for rollout in own_rollouts:
                rollout.end(Rollout.Status.ROLLED_BACK, actor, reason=reason)
            for robot in Robot.objects.filter(policy_version=version, retired=False):
                control.assign_version(robot, deployed, actor, reason=f"roll back of {version}")
        else:
            running = active_canary()
            if running is not None:
                raise IllegalTransition(f"cannot roll back {version} while {running.version} is in canary: "
                                        "promote or roll back the canary first")
            previous = previous_fleet_version(version)
            if previous is None:
                raise IllegalTransition(f"cannot roll back {version}: the fleet ran no earlier version to return to")
            version.advance("roll_back", actor, reason=reason, details={
                "returns_to": previous.number, "figures": _figures(version), "online": online_comparison(version)})
            for rollout in own_rollouts:
                rollout.end(Rollout.Status.ROLLED_BACK, actor, reason=reason)
            deploy_to_fleet(previous, actor, reason=f"restored by rolling back {version}" + (
                f": {reason}" if reason else ""), restoring=True)
    announce(version, "roll_back", actor, reason, notice=analysis is None)  # automatic: its alert says it
    return version


def redeploy(version: PolicyVersion, actor, reason: str = "") -> PolicyVersion:
    """A roll back to a version of the supervisor's choosing: a superseded version (one the whole fleet ran, and
    left for a newer one) runs on every robot again; the deployed version is rolled back. Allowed while
    deployments are frozen, as any roll back is; refused while a canary runs, and when retention removed the
    version's checkpoint (it can no longer run)."""
    with transaction.atomic():
        rollout_lock()
        version.refresh_from_db()
        if version.checkpoint_removed_at is not None:
            raise IllegalTransition(
                f"cannot redeploy {version}: retention removed its checkpoint on "
                f"{version.checkpoint_removed_at:%Y-%m-%d %H:%M} UTC, so it can no longer run. Only the last "
                f"{settings.CHECKPOINT_KEEP_FLEET} versions the fleet ran and the newest "
                f"{settings.CHECKPOINT_KEEP_LAST} keep theirs (CHECKPOINT_KEEP_FLEET, CHECKPOINT_KEEP_LAST)")
        if version.state != State.SUPERSEDED:
            raise IllegalTransition(f"cannot redeploy {version}: it is {version.get_state_display()} now (it may just "
                                    "have been decided by someone else); only a superseded version can be redeployed")
        running = active_canary()
        if running is not None:
            raise IllegalTransition(f"cannot redeploy {version} while {running.version} is in canary: "
                                    "promote or roll back the canary first")
        replaced = deployed_version()
        if replaced is not None:
            replaced.advance("roll_back", actor, reason=reason or f"rolled back to {version}", details={
                "returns_to": version.number, "figures": _figures(replaced), "online": online_comparison(replaced)})
            for rollout in Rollout.objects.filter(version=replaced, status=Rollout.Status.ACTIVE):
                rollout.end(Rollout.Status.ROLLED_BACK, actor, reason=reason)
        deploy_to_fleet(version, actor, reason=reason or "redeployed", restoring=True, details={
            "redeploy": True, "replaces": replaced.number if replaced else None,
            "online": online_comparison(version)})
    if replaced is not None:
        announce(replaced, "roll_back", actor, f"the fleet returns to {version}", notice=False)
    announce(version, "redeploy", actor, reason)
    return version


def roll_back_automatically(rollout: Rollout, analysis: dict) -> Alert:
    """The canary check found the canary worse than the deployed version: roll it back and raise an alert that
    every dashboard shows until a supervisor acknowledges it."""
    cand, dep = analysis["overall"]["candidate"], analysis["overall"]["deployed"]
    reason = (f"automatic: canary autonomous success {cand['rate']:.0%} (assisted {cand['assisted_rate']:.0%}, "
              f"n={cand['episodes']}) is below the deployed v{analysis['deployed']}'s {dep['rate']:.0%} (assisted "
              f"{dep['assisted_rate']:.0%}, n={dep['episodes']}) by more than the margin {analysis['margin']:.0%}")
    with transaction.atomic():
        roll_back(rollout.version, None, reason=reason, analysis=analysis)
        alert = Alert.raise_alert(f"{rollout.version} was rolled back automatically. {reason[len('automatic: '):]}.",
                                  version=rollout.version, details={"canary": analysis},
                                  kind=Alert.Kind.AUTO_ROLLBACK, subject=f"v{rollout.version.number}")
    return alert
