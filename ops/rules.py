"""Alert rules, evaluated by beat (ops.tasks.check_rules every ALERT_CHECK_SECONDS).

Each rule looks at the system as it is now and names the subjects whose condition holds (a task, a robot, a queue,
or "" for the fleet). A subject whose condition holds and has no open incident fires one (governance.Alert
.open_incident: once, whatever races); an open incident whose subject's condition no longer holds resolves itself.
Both are audited and heard by dashboards and webhooks. The automatic rollback of a canary is raised where it
happens (governance.decisions) as an event of kind auto_rollback.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from core import bus
from core.stats import wilson
from fleet.models import AUTONOMOUS_SUCCESS, Episode, Robot, Task
from governance.models import Alert
from learner.models import PolicyVersion

log = logging.getLogger(__name__)


@dataclass
class Finding:
    """A subject whose condition holds now."""

    message: str
    level: str = Alert.Level.WARNING
    details: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """What a rule says now: the subjects whose condition holds. Every open incident of another subject has cleared,
    unless the rule says which have (`cleared`, subject -> why: a success drop resolves on recovery, not as soon as
    it stops being a drop) or that it cannot tell now (`unknown`: Redis or the broker did not answer)."""

    firing: dict[str, Finding]
    cleared: dict[str, str] | None = None
    unknown: bool = False


# Episodes the success-drop rule reads as "recent" at most, however many arrived since its previous check.
RECENT_CAP = 2000


def success_drop(open_incidents: dict[str, Alert]) -> Verdict:
    """A task's autonomous success (no intervention of any kind) dropped below its trailing baseline.

    Recent: the task's last ALERT_SUCCESS_WINDOW online episodes, or every one that arrived since the previous check
    when more did (a fleet can finish more episodes between two checks than the window holds: the drop would
    otherwise slide into the baseline unseen). Baseline: the ALERT_SUCCESS_BASELINE online episodes before them (at
    least ALERT_SUCCESS_MIN_BASELINE). It fires when the upper end of the recent Wilson 95 % interval lies below the
    lower end of the baseline's by more than ALERT_SUCCESS_MARGIN: both intervals, not a raw difference, so twenty
    unlucky episodes of a 0.9 policy do not page anyone. The baseline is kept in the incident; it resolves once the
    recent window's success is back within the margin of that baseline's lower end."""
    window, baseline_size = settings.ALERT_SUCCESS_WINDOW, settings.ALERT_SUCCESS_BASELINE
    margin = settings.ALERT_SUCCESS_MARGIN
    # Forgotten after a few missed checks: after a long pause "since the previous check" means nothing useful.
    remember = max(600, int(10 * settings.ALERT_CHECK_SECONDS))
    firing, cleared = {}, {}
    for task in Task.objects.all():
        online = Episode.objects.filter(task=task, source=Episode.Source.ONLINE)
        key = bus.rule_seen_key("success-drop", task.pk)
        seen = bus.degrade(lambda: bus.client().get(key))
        newest = online.aggregate(newest=Max("pk"))["newest"]
        if newest is None:
            continue
        arrived = online.filter(pk__gt=int(seen)).count() if seen is not None else 0
        bus.degrade(lambda: bus.client().set(key, newest, ex=remember))
        size = min(max(window, arrived), RECENT_CAP)
        rows = list(online.order_by("-finished_at", "-id").values_list("pk", flat=True)[: size + baseline_size])
        if len(rows) < window:
            continue
        recent_ids, baseline_ids = rows[:size], rows[size:]
        recent_ok = Episode.objects.filter(pk__in=recent_ids).filter(AUTONOMOUS_SUCCESS).count()
        recent_rate = recent_ok / len(recent_ids)
        recent_low, recent_high = wilson(recent_ok, len(recent_ids))
        incident = open_incidents.get(task.env_name)
        if incident is not None:
            floor = incident.details["baseline"]["low"] - margin
            if recent_rate >= floor:
                baseline = incident.details["baseline"]["rate"]
                cleared[task.env_name] = (f"{task.env_name}: autonomous success is back to {recent_rate:.0%} over "
                                          f"the last {len(recent_ids)} episodes (baseline {baseline:.0%})")
            continue
        if len(baseline_ids) < settings.ALERT_SUCCESS_MIN_BASELINE:
            continue
        base_ok = Episode.objects.filter(pk__in=baseline_ids).filter(AUTONOMOUS_SUCCESS).count()
        base_low, base_high = wilson(base_ok, len(baseline_ids))
        if recent_high < base_low - margin:
            base_rate = base_ok / len(baseline_ids)
            firing[task.env_name] = Finding(
                f"Autonomous success of {task.env_name} dropped to {recent_rate:.0%} over its last "
                f"{len(recent_ids)} episodes (95 % interval {recent_low:.0%}-{recent_high:.0%}), below its baseline "
                f"of {base_rate:.0%} ({base_low:.0%}-{base_high:.0%}, {len(baseline_ids)} episodes before them).",
                level=Alert.Level.ERROR,
                details={"task": task.env_name,
                         "recent": {"successes": recent_ok, "episodes": len(recent_ids), "rate": recent_rate,
                                    "low": recent_low, "high": recent_high},
                         "baseline": {"successes": base_ok, "episodes": len(baseline_ids), "rate": base_rate,
                                      "low": base_low, "high": base_high},
                         "margin": margin})
    return Verdict(firing, cleared)


def robot_silent(open_incidents: dict[str, Alert]) -> Verdict:
    """A started robot has not reported for longer than FLEET_HEARTBEAT_TIMEOUT (or the sweep marked it offline).
    Clears when it reports again, or when an operator stops or removes it."""
    timeout = settings.FLEET_HEARTBEAT_TIMEOUT
    now = timezone.now()
    firing = {}
    for robot in Robot.objects.filter(enabled=True, retired=False):
        heard = robot.last_heartbeat or robot.status_changed_at or robot.created_at
        silent = (now - heard).total_seconds()
        if robot.status == Robot.Status.OFFLINE or (robot.status != Robot.Status.PAUSED and silent > timeout):
            firing[robot.name] = Finding(
                f"Robot {robot.name} has been silent for {silent:.0f} s (heartbeat timeout {timeout:.0f} s).",
                details={"robot": robot.name, "silent_seconds": round(silent, 1), "timeout": timeout})
    return Verdict(firing)


def learner_idle(open_incidents: dict[str, Alert]) -> Verdict:
    """Episodes keep arriving but no version was published for ALERT_LEARNER_IDLE_MINUTES (0: off)."""
    minutes = settings.ALERT_LEARNER_IDLE_MINUTES
    if not minutes:
        return Verdict({})
    since = timezone.now() - timedelta(minutes=minutes)
    latest = PolicyVersion.objects.aggregate(latest=Max("created_at"))["latest"]
    # finished_at: the (source, -finished_at) index answers it; the rule runs every ALERT_CHECK_SECONDS.
    arriving = Episode.objects.filter(source=Episode.Source.ONLINE, finished_at__gte=since).count()
    if arriving and (latest is None or latest < since):
        return Verdict({"": Finding(
            f"The learner has published nothing for {minutes:g} minutes while {arriving} episodes arrived.",
            details={"minutes": minutes, "episodes": arriving,
                     "latest_version_at": latest.isoformat() if latest else None})})
    return Verdict({})


def ingest_rejections(open_incidents: dict[str, Alert]) -> Verdict:
    """More than ALERT_REJECTIONS_PER_MINUTE episodes refused per minute over the last ALERT_REJECTIONS_MINUTES
    minutes, the current one included (every process's refusals: core.metrics.rejected tallies them in Redis)."""
    minutes = settings.ALERT_REJECTIONS_MINUTES
    now = int(time.time() // 60)
    keys = [bus.rejections_key(minute) for minute in range(now - minutes + 1, now + 1)]
    counts = bus.degrade(lambda: bus.client().mget(keys))
    if counts is None:
        return Verdict({}, unknown=True)  # Redis away: say nothing either way
    refused = sum(int(count or 0) for count in counts)
    rate = refused / minutes
    if rate > settings.ALERT_REJECTIONS_PER_MINUTE:
        return Verdict({"": Finding(
            f"{refused} episodes were refused in the last {minutes} minutes ({rate:.1f} a minute; the threshold "
            f"is {settings.ALERT_REJECTIONS_PER_MINUTE:g}).", details={"refused": refused, "minutes": minutes})})
    return Verdict({})


def queue_backlog(open_incidents: dict[str, Alert]) -> Verdict:
    """A Celery queue holds more than ALERT_QUEUE_DEPTH messages."""
    from ops.collectors import queue_depths

    depths = queue_depths()
    if depths is None:
        return Verdict({}, unknown=True)
    firing = {queue: Finding(f"Celery queue {queue} holds {depth} messages (threshold {settings.ALERT_QUEUE_DEPTH}).",
                             details={"queue": queue, "depth": depth})
              for queue, depth in depths.items() if depth > settings.ALERT_QUEUE_DEPTH}
    return Verdict(firing)


RULES = {Alert.Kind.SUCCESS_DROP: success_drop, Alert.Kind.ROBOT_SILENT: robot_silent,
         Alert.Kind.LEARNER_IDLE: learner_idle, Alert.Kind.INGEST_REJECTIONS: ingest_rejections,
         Alert.Kind.QUEUE_BACKLOG: queue_backlog}


def check() -> dict[str, int]:
    """Evaluate every rule once: fire new incidents, resolve cleared ones. Returns counts for the log."""
    fired = resolved = 0
    for kind, rule in RULES.items():
        try:
            open_incidents = Alert.open_incidents(kind)
            verdict = rule(open_incidents)
        except Exception:  # one broken rule must not silence the others
            log.exception("alert rule %s failed", kind)
            continue
        for subject, finding in verdict.firing.items():
            if subject not in open_incidents:
                try:
                    fired += Alert.open_incident(kind, subject, finding.message, level=finding.level,
                                                 details=finding.details) is not None
                except Exception:  # the next check tries again; the other subjects and rules go on
                    log.exception("alert rule %s could not fire for %r", kind, subject)
        if verdict.unknown:
            continue
        for subject, incident in open_incidents.items():
            if subject in verdict.firing:
                continue
            if verdict.cleared is None:
                why = f"{incident.get_kind_display()}{f' ({subject})' if subject else ''}: the condition cleared"
            elif subject in verdict.cleared:
                why = verdict.cleared[subject]
            else:
                continue
            try:
                resolved += incident.resolve(why)
            except Exception:
                log.exception("alert rule %s could not resolve incident %s", kind, incident.pk)
    return {"fired": fired, "resolved": resolved}
