"""What the dashboards show, read from the per-minute and per-hour roll-ups (fleet.models.EpisodeRollup) so that
a page costs the same with a thousand episodes or a million: a window is whole hours from the hourly rows plus
its ragged edges from the minute rows.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Q, Sum
from django.utils import timezone

from core import bus
from core.stats import Rate
from fleet.models import Episode, EpisodeRollup, Robot, Task, version_model

COUNTS = ("episodes", "successes", "steps", "success_steps", "intervention_steps", "interventions")
CHART_HOURS = 6  # how far back the fleet page's charts reach
ROLLING_MINUTES = 15  # the rolling window of the live success and throughput curves
RECENT_OUTCOMES = 20


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def rollups(start: datetime, end: datetime, source: str | None = Episode.Source.ONLINE):
    """Roll-up rows covering [start, end) at minute resolution, each episode counted once."""
    start = floor_minute(start)
    first_hour = floor_hour(start) + (timedelta(hours=1) if start != floor_hour(start) else timedelta(0))
    last_hour = floor_hour(end)
    if first_hour < last_hour:
        cover = (Q(size="h", bucket__gte=first_hour, bucket__lt=last_hour)
                 | Q(size="m", bucket__gte=start, bucket__lt=first_hour)
                 | Q(size="m", bucket__gte=last_hour, bucket__lt=end))
    else:
        cover = Q(size="m", bucket__gte=start, bucket__lt=end)
    rows = EpisodeRollup.objects.filter(cover)
    return rows.filter(source=source) if source else rows


def totals(start: datetime, end: datetime, by: tuple[str, ...] = (), source=Episode.Source.ONLINE,
           where: Q | None = None) -> list[dict]:
    """Summed counts per combination of `by` (any of task_id, robot_id, version_id, source, bucket)."""
    rows = rollups(start, end, source)
    if where is not None:
        rows = rows.filter(where)
    if by:
        rows = rows.values(*by).order_by(*by)
    else:
        rows = rows.values(_=Q(pk__isnull=False)).order_by()  # one group: everything
    result = list(rows.annotate(**{name: Sum(name) for name in COUNTS}))
    for row in result:
        row.pop("_", None)
    return result


def last_minutes(now: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The window of the last `minutes` minute buckets, the running one included (as the live page counts)."""
    return floor_minute(now) - timedelta(minutes=minutes - 1), now


def _kpis(now: datetime, tasks: list[Task]) -> dict:
    hour = {row["task_id"]: row for row in totals(*last_minutes(now, 60), ("task_id",))}
    quarter = {row["task_id"]: row for row in totals(*last_minutes(now, ROLLING_MINUTES), ("task_id",))}
    per_task = []
    for task in tasks:
        h, q = hour.get(task.pk, {}), quarter.get(task.pk, {})
        per_task.append({
            "task": task.env_name, "id": task.pk,
            "hour": Rate(h.get("successes", 0), h.get("episodes", 0)).as_dict(),
            "quarter": Rate(q.get("successes", 0), q.get("episodes", 0)).as_dict(),
        })
    fleet = {name: sum(row[name] for row in hour.values()) for name in COUNTS}
    policy_steps = fleet["steps"] - fleet["intervention_steps"]
    return {
        "tasks": per_task,
        "episodes_per_hour": fleet["episodes"],
        "interventions_per_hour": fleet["interventions"],
        # Mean policy-controlled steps between two interventions (none in the hour: every step was the policy's).
        "steps_between_interventions": round(policy_steps / fleet["interventions"]) if fleet["interventions"] else None,
    }


def _recent_outcomes(robot_ids: list[int]) -> dict[int, list[dict]]:
    """The last RECENT_OUTCOMES online episodes of each robot: one index range scan per robot, in one query."""
    if not robot_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.id, e.id, e.outcome, e.intervention_steps FROM unnest(%s::integer[]) AS r(id) "
            "CROSS JOIN LATERAL (SELECT id, outcome, intervention_steps FROM fleet_episode "
            "  WHERE robot_id = r.id AND source = 'online' ORDER BY finished_at DESC, id DESC LIMIT %s) e",
            [robot_ids, RECENT_OUTCOMES])
        result: dict[int, list[dict]] = {pk: [] for pk in robot_ids}
        for robot_id, episode_id, outcome, intervention_steps in cursor.fetchall():
            result[robot_id].append({"episode": episode_id, "outcome": outcome, "helped": intervention_steps > 0})
    for marks in result.values():
        marks.reverse()  # oldest first, newest at the right
    return result


def running_progress(robot_ids: list[int]) -> dict[int, dict]:
    """Each running robot's episode: step, start, who is in control (written by the actor once a second)."""
    import time

    if not robot_ids:
        return {}
    # Redis away: the tiles show what PostgreSQL knows (status, last heartbeat), without the running step.
    values = bus.degrade(bus.client().hmget, bus.PROGRESS_KEY, robot_ids, default=[None] * len(robot_ids))
    raw = {pk: value for pk, value in zip(robot_ids, values) if value}
    return bus.fresh_progress(raw, time.time())


def _series(now: datetime) -> dict:
    """Per-minute points for the charts: rolling success per task, throughput and interventions per hour, and
    cumulative success per policy version (the newest few), over the last CHART_HOURS."""
    start = floor_minute(now) - timedelta(hours=CHART_HOURS)
    # Minute points: the chart window is read from the minute rows alone (CHART_HOURS of them at most).
    minute_rows = EpisodeRollup.objects.filter(size="m", source=Episode.Source.ONLINE,
                                               bucket__gte=start - timedelta(minutes=ROLLING_MINUTES), bucket__lt=now)
    rows = list(minute_rows.values("bucket", "task_id", "version_id").order_by("bucket").annotate(
        **{name: Sum(name) for name in ("episodes", "successes", "interventions")}))
    return {"start": start.isoformat(), "rows": [
        {"t": row["bucket"].isoformat(), "task": row["task_id"], "version": row["version_id"],
         "n": row["episodes"], "s": row["successes"], "i": row["interventions"]} for row in rows]}


def fleet_snapshot(now: datetime | None = None) -> dict:
    """Everything the fleet page renders, as plain data (the page embeds it; a reconnecting page refetches it)."""
    PolicyVersion = version_model()
    now = now or timezone.now()
    robots = list(Robot.objects.filter(retired=False).select_related("policy_version").order_by("name"))
    tasks = list(Task.objects.order_by("env_name"))
    ids = [robot.pk for robot in robots]
    outcomes = _recent_outcomes(ids)
    progress = running_progress(ids)
    versions = {
        "deployed": [v.number for v in PolicyVersion.objects.filter(state="deployed")],
        "candidates": [{"number": v.number, "state": v.get_state_display()} for v in PolicyVersion.objects.filter(
            state__in=["candidate", "evaluating", "awaiting_approval", "canary"]).order_by("-number")[:5]],
    }
    series = _series(now)
    version_ids = {row["version"] for row in series["rows"]} | {r.policy_version_id for r in robots}
    numbers = dict(PolicyVersion.objects.filter(pk__in=version_ids).values_list("pk", "number"))
    return {
        "now": now.isoformat(),
        "robots": [{
            **robot.live_state(),  # state, label, commands: what the tile shows and offers
            "id": robot.pk, "name": robot.name, "kind": robot.kind, "status": robot.status,
            "status_label": robot.get_status_display(),
            "enabled": robot.enabled, "version": robot.policy_version.number if robot.policy_version else None,
            "outcomes": outcomes.get(robot.pk, []), "progress": progress.get(robot.pk),
        } for robot in robots],
        "tasks": {task.pk: task.env_name for task in tasks},
        "versions": versions,
        "version_numbers": numbers,
        "kpis": _kpis(now, tasks),
        "series": series,
    }


def _separation(cell: Rate, others: Rate) -> str:
    """'worse' / 'better' when the two Wilson intervals do not overlap, else ''."""
    if not cell.episodes or not others.episodes:
        return ""
    (low, high), (other_low, other_high) = cell.interval, others.interval
    return "worse" if high < other_low else "better" if low > other_high else ""


def breakdown(start: datetime, end: datetime, source: str = Episode.Source.ONLINE, max_versions: int = 12,
              numbers: list[int] | None = None) -> dict:
    """Success per policy version × robot × task in [start, end), each cell with its episodes and Wilson interval;
    a cell is marked when its interval separates from the same version and task on the other robots. `numbers`
    restricts it to those version numbers (None: all)."""
    PolicyVersion = version_model()
    # The newest versions first, found before aggregating: a long window of a continuously deploying fleet holds
    # hundreds of versions, and only the shown ones are summed per robot and task.
    window = rollups(start, end, source)
    if numbers is not None:  # 0: episodes without a policy (roll-ups keep them under version id 0)
        chosen = Q(version_id__in=PolicyVersion.objects.filter(number__in=numbers).values("pk"))
        window = window.filter(chosen | Q(version_id=0) if 0 in numbers else chosen)
    in_window = list(window.values_list("version_id", flat=True).distinct().order_by("-version_id"))
    shown, hidden = in_window[:max_versions], max(0, len(in_window) - max_versions)
    rows = totals(start, end, ("version_id", "robot_id", "task_id"), source, where=Q(version_id__in=shown))
    numbers = dict(PolicyVersion.objects.filter(pk__in=shown).values_list("pk", "number"))
    robots = dict(Robot.objects.filter(pk__in={row["robot_id"] for row in rows}).values_list("pk", "name"))
    task_names = dict(Task.objects.filter(pk__in={row["task_id"] for row in rows}).values_list("pk", "env_name"))
    task_ids = sorted(task_names, key=task_names.get)
    cells: dict[tuple, Rate] = {}
    pooled: dict[tuple, Rate] = {}
    for row in rows:
        if row["version_id"] not in numbers and row["version_id"] != 0:
            continue
        key = (row["version_id"], row["robot_id"], row["task_id"])
        cells[key] = Rate(row["successes"], row["episodes"])
        pool = pooled.setdefault((row["version_id"], row["task_id"]), Rate(0, 0))
        pool.successes += row["successes"]
        pool.episodes += row["episodes"]
    versions = []
    for version_id in [v for v in shown if v in numbers or v == 0]:
        robot_ids = sorted({k[1] for k in cells if k[0] == version_id}, key=lambda pk: robots.get(pk, ""))
        lines = []
        for robot_id in robot_ids:
            line = []
            for task_id in task_ids:
                cell = cells.get((version_id, robot_id, task_id))
                if cell is None:
                    line.append(None)
                    continue
                pool = pooled[(version_id, task_id)]
                others = Rate(pool.successes - cell.successes, pool.episodes - cell.episodes)
                line.append(dict(cell.as_dict(), mark=_separation(cell, others)))
            lines.append({"robot": robots.get(robot_id, "offline demos" if robot_id == 0 else robot_id),
                          "cells": line})
        total = [pooled[(version_id, t)].as_dict() if (version_id, t) in pooled else None for t in task_ids]
        versions.append({"number": numbers.get(version_id), "robots": lines, "total": total})
    return {"tasks": [task_names[t] for t in task_ids], "versions": versions,
            "hidden_versions": hidden}
