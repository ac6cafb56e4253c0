"""What the dashboards show, read from the per-minute and per-hour roll-ups (fleet.models.EpisodeRollup) so that
a page costs the same with a thousand episodes or a million: a window is whole hours from the hourly rows plus
its ragged edges from the minute rows; a chart's series is minute rows, 5-minute bins of them, or hour rows,
whichever its window's length calls for (RESOLUTIONS).

Success is autonomous success (fleet.models.AUTONOMOUS_SUCCESS) everywhere, with assisted success beside it.
Every KPI is the last point of its chart: both come from `figures` over the same rolling span.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db import connection
from django.db.models import Q, Sum
from django.utils import timezone

from core import bus
from core.stats import Rate
from fleet.models import Episode, EpisodeRollup, Robot, Task, version_model

COUNTS = ("episodes", "autonomous_successes", "assisted_successes", "steps", "success_steps", "intervention_steps",
          "interventions")
RECENT_OUTCOMES = 20
VERSION_TRACES = 6  # the newest versions of a window drawn on the per-version chart


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


# --- one definition for every figure, KPI and chart point ---------------------------------------------------------

DEFINITIONS = {
    "autonomous": "Autonomous success: the share of online episodes that succeeded with the policy alone in control "
                  "- not one step acted by the HG-DAgger gate's expert, an operator or any other intervention.",
    "assisted": "Assisted success: the share of online episodes that succeeded only with help - the gate's expert "
                "or an operator acted for at least one step. Autonomous + assisted = every success.",
    "episodes_per_hour": "Online episodes that finished in the span, divided by the span's length: a rate per "
                         "hour.",
    "interventions_per_hour": "Takeovers in the span per hour of it: each time the HG-DAgger gate or an operator "
                              "took control from the policy counts once, so an episode can hold several and this "
                              "can exceed episodes per hour. Annotators' relabels do not count.",
    "steps_between_interventions": "Policy-controlled steps in the span divided by its takeovers: how long the "
                                   "policy runs, on average, before someone takes over (none taken over: -).",
    "version_success": "Autonomous success of each of the newest policy versions in the window, counted from the "
                       "window's start up to each point (assisted success in the hover).",
}


@dataclass(frozen=True)
class Resolution:
    bucket: timedelta  # chart points stand at the ends of these buckets
    span: int  # each figure covers this many buckets up to its point (the rolling span)
    size: str  # the roll-up rows read: minute ("m") or hour ("h")


# (longest window, resolution). Minute rows up to 6 hours; 5-minute buckets summed from minute rows by the
# database up to 2 days; hour rows beyond, so a week is 168 buckets per task however busy the fleet.
RESOLUTIONS = (
    (timedelta(minutes=30), Resolution(timedelta(minutes=1), 5, "m")),
    (timedelta(hours=6), Resolution(timedelta(minutes=1), 15, "m")),
    (timedelta(days=2), Resolution(timedelta(minutes=5), 12, "m")),
    (None, Resolution(timedelta(hours=1), 6, "h")),
)
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def floor_to(t: datetime, step: timedelta) -> datetime:
    return EPOCH + (t - EPOCH) // step * step


def ceil_to(t: datetime, step: timedelta) -> datetime:
    return EPOCH - (EPOCH - t) // step * step


def _words(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes % 1440 == 0:
        return f"{minutes // 1440} d"
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


@dataclass(frozen=True)
class ChartWindow:
    """What a page's charts and KPIs cover: the x-axis from `start` to `end`, points every `resolution.bucket`
    up to min(end, now), each figure over the `resolution.span` buckets ending at its point. A live window ends
    now and moves with it (the page extends it from live events); a past one is fixed."""

    start: datetime
    end: datetime
    now: datetime
    resolution: Resolution
    label: str
    moving: bool  # "the last ...": the page slides it along with the clock

    @classmethod
    def over(cls, start: datetime, end: datetime, now: datetime, label: str = "") -> ChartWindow:
        """The window from start to end; with a label (a preset: "last hour") it moves with the clock."""
        resolution = next(r for longest, r in RESOLUTIONS if longest is None or end - start <= longest)
        if end < now:  # a past range, in whole buckets: no point counts episodes after the range's end
            start, end = floor_to(start, resolution.bucket), min(ceil_to(end, resolution.bucket), now)
        return cls(start, end, now, resolution, label or f"{start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC",
                   moving=bool(label))

    @property
    def live(self) -> bool:
        return self.end >= self.now

    @property
    def data_end(self) -> datetime:
        return min(self.end, self.now)

    @property
    def span(self) -> timedelta:
        return self.resolution.bucket * self.resolution.span

    @property
    def first_bucket(self) -> datetime:
        """The first bucket read: the rolling span of the first point reaches back before the window."""
        return floor_to(self.start, self.resolution.bucket) - self.resolution.bucket * (self.resolution.span - 1)

    def as_dict(self) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "now": self.now.isoformat(),
                "live": self.live, "moving": self.moving, "label": self.label,
                "end_label": f"{self.data_end:%Y-%m-%d %H:%M} UTC", "bucket_seconds": self.resolution.bucket.total_seconds(),
                "span_buckets": self.resolution.span, "span_label": _words(self.span)}


def figures(counts: dict, seconds: float) -> dict:
    """Every fleet figure over one span of `seconds` holding `counts` (the sums of roll-up columns): the one
    definition the KPIs, the chart points and static/js/fleet.js (`figures`) share."""
    n, interventions = counts["episodes"], counts["interventions"]
    return {
        "episodes": n,
        "autonomous": counts["autonomous_successes"] / n if n else None,
        "assisted": counts["assisted_successes"] / n if n else None,
        "episodes_per_hour": n * 3600 / seconds,
        "interventions_per_hour": interventions * 3600 / seconds,
        "steps_between_interventions":
            (counts["steps"] - counts["intervention_steps"]) / interventions if interventions else None,
    }


def _zero() -> dict:
    return dict.fromkeys(COUNTS, 0)


# One scan of the window's roll-up rows, summed twice by the database (GROUPING SETS): per bucket and task, and per
# bucket and version for the newest VERSION_TRACES versions of the window. Raw SQL: the rows need no model, and
# Django's per-value converters cost more than the query on a week's buckets.
SERIES_SQL = """
WITH grouped AS (
    SELECT {at} AS at, task_id, version_id, {sums}
    FROM fleet_episoderollup
    WHERE size = %(size)s AND source = 'online' AND bucket >= %(first)s AND bucket < %(end)s
    GROUP BY GROUPING SETS (({at}, task_id), ({at}, version_id))
)
SELECT at, task_id, version_id, {names} FROM grouped
WHERE task_id IS NOT NULL
   OR version_id IN (SELECT DISTINCT version_id FROM grouped
                     WHERE task_id IS NULL AND version_id <> 0 AND at >= %(start)s
                     ORDER BY version_id DESC LIMIT %(traces)s) AND at >= %(start)s
ORDER BY at
"""


def _bucket_rows(window: ChartWindow) -> tuple[list[tuple], list[tuple]]:
    """(at, task id, counts) and (at, version id, counts) for the window's buckets, from the first it reads."""
    resolution = window.resolution
    native = resolution.bucket == {"m": timedelta(minutes=1), "h": timedelta(hours=1)}[resolution.size]
    # Coarser buckets than the rows': the database bins them (date_bin), so one row per bucket leaves it.
    at = "bucket" if native else "date_bin(%(bucket)s, bucket, %(epoch)s)"
    sql = SERIES_SQL.format(at=at, sums=", ".join(f"sum({name})::bigint AS {name}" for name in COUNTS),
                            names=", ".join(COUNTS))
    with connection.cursor() as cursor:
        cursor.execute(sql, {"size": resolution.size, "first": window.first_bucket, "end": window.data_end,
                             "start": floor_to(window.start, resolution.bucket), "bucket": resolution.bucket,
                             "epoch": EPOCH, "traces": VERSION_TRACES})
        rows = cursor.fetchall()
    by_task = [(at, task_id, dict(zip(COUNTS, counts))) for at, task_id, _, *counts in rows if task_id is not None]
    by_version = [(at, version_id, dict(zip(COUNTS, counts))) for at, task_id, version_id, *counts in rows
                  if task_id is None]
    return by_task, by_version


def _rolling(window: ChartWindow, buckets: dict[datetime, dict]) -> list[tuple[datetime, dict, float]]:
    """(point, counts over its span, the span's seconds) at every bucket end in the window and at its end: the
    running bucket's point stands at `now` and its span is shorter by what the bucket has still to run."""
    step, width = window.resolution.bucket, window.resolution.span
    order = []
    at = window.first_bucket
    while at < window.data_end:
        order.append(at)
        at += step
    points, running = [], _zero()
    for k, bucket in enumerate(order):
        for name, value in buckets.get(bucket, {}).items():
            running[name] += value
        if k >= width:
            for name, value in buckets.get(order[k - width], {}).items():
                running[name] -= value
        if k >= width - 1:
            point = min(bucket + step, window.data_end)
            points.append((point, dict(running), (step * (width - 1) + (point - bucket)).total_seconds()))
    return points


def fleet_series(window: ChartWindow, task_ids: list[int]) -> dict:
    """The fleet page's charts and KPIs from one definition (`figures`): per task and for the whole fleet, each
    figure over the rolling span ending at each point; the KPIs are the last points. Plus the cumulative
    autonomous success of the newest versions, and the counts of the buckets still inside the last span, from
    which the page computes its next points live."""
    per_task: dict[int, dict[datetime, dict]] = {task_id: {} for task_id in task_ids}
    fleet: dict[datetime, dict] = {}
    by_task, by_version = _bucket_rows(window)
    for at, task_id, counts in by_task:
        per_task.setdefault(task_id, {})[at] = counts
        total = fleet.setdefault(at, _zero())
        for name in COUNTS:
            total[name] += counts[name]
    fleet_points = _rolling(window, fleet)
    series = {"x": [at.isoformat() for at, _, _ in fleet_points], "fleet": {}, "tasks": {}}
    names = ("autonomous", "assisted", "episodes", "episodes_per_hour", "interventions_per_hour",
             "steps_between_interventions")
    values = [figures(counts, seconds) for _, counts, seconds in fleet_points]
    series["fleet"] = {name: [v[name] for v in values] for name in names}
    for task_id, buckets in per_task.items():
        values = [figures(counts, seconds) for _, counts, seconds in _rolling(window, buckets)]
        series["tasks"][task_id] = {name: [v[name] for v in values] for name in ("autonomous", "assisted",
                                                                                   "episodes")}
    # The buckets of the last point's span: the page adds its live points to them.
    step = window.resolution.bucket
    last_span = ceil_to(window.data_end, step) - window.span
    series["recent"] = [{"at": at.isoformat(), "task": task_id, **counts}
                        for task_id, buckets in per_task.items() for at, counts in buckets.items() if at >= last_span]
    series["versions"] = _version_series(window, by_version)
    return series


def _version_series(window: ChartWindow, by_version: list[tuple]) -> dict:
    """Per version (the newest VERSION_TRACES of the window): autonomous and assisted success cumulated from the
    window's start, a point at the end of every bucket in which it ran, and its totals (for live points)."""
    result: dict[int, dict] = {}
    for at, version_id, counts in by_version:
        line = result.setdefault(version_id, {"x": [], "autonomous": [], "assisted": [], "episodes": [],
                                              "totals": _zero()})
        totals = line["totals"]
        for name in COUNTS:
            totals[name] += counts[name]
        value = figures(totals, 1)
        line["x"].append(min(at + window.resolution.bucket, window.data_end).isoformat())
        for name in ("autonomous", "assisted", "episodes"):
            line[name].append(value[name])
    return result


def kpis(series: dict, task_names: dict[int, str]) -> dict:
    """The KPIs: each the last point of its chart (None: no point, as with an empty window); tasks by name."""
    def last(values: dict) -> dict:
        return {name: points[-1] if points else None for name, points in values.items()}

    return {"fleet": last(series["fleet"]),
            "tasks": [{"id": task_id, "task": task_names[task_id], **last(series["tasks"][task_id])}
                      for task_id in sorted(task_names, key=task_names.get)]}


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


DEFAULT_WINDOW = timedelta(hours=1)


def fleet_snapshot(now: datetime | None = None, window: ChartWindow | None = None) -> dict:
    """Everything the fleet page renders, as plain data (the page embeds it; a reconnecting page refetches it).
    `window`: what the charts and KPIs cover (default: the last hour)."""
    PolicyVersion = version_model()
    now = now or timezone.now()
    window = window or ChartWindow.over(now - DEFAULT_WINDOW, now, now, "last hour")
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
    series = fleet_series(window, [task.pk for task in tasks])
    version_ids = set(series["versions"]) | {r.policy_version_id for r in robots}
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
        "window": window.as_dict(),
        "kpis": kpis(series, {task.pk: task.env_name for task in tasks}),
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
    """Autonomous success per policy version × robot × task in [start, end), each cell with its episodes, Wilson
    interval and assisted successes; a cell is marked when its interval separates from the same version and task
    on the other robots. `numbers` restricts it to those version numbers (None: all)."""
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
    cells: dict[tuple, Rate] = {}  # autonomous successes / episodes
    pooled: dict[tuple, Rate] = {}
    assisted: dict[tuple, int] = {}  # assisted successes of a cell (version, robot, task) or a pool (version, task)
    for row in rows:
        if row["version_id"] not in numbers and row["version_id"] != 0:
            continue
        key = (row["version_id"], row["robot_id"], row["task_id"])
        cells[key] = Rate(row["autonomous_successes"], row["episodes"])
        assisted[key] = row["assisted_successes"]
        pool = pooled.setdefault((row["version_id"], row["task_id"]), Rate(0, 0))
        pool.successes += row["autonomous_successes"]
        pool.episodes += row["episodes"]
        assisted[key[0], key[2]] = assisted.get((key[0], key[2]), 0) + row["assisted_successes"]
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
                line.append(dict(cell.as_dict(), mark=_separation(cell, others),
                                 assisted=assisted[version_id, robot_id, task_id]))
            lines.append({"robot": robots.get(robot_id, "offline demos" if robot_id == 0 else robot_id),
                          "cells": line})
        total = [dict(pooled[version_id, t].as_dict(), assisted=assisted[version_id, t])
                 if (version_id, t) in pooled else None for t in task_ids]
        versions.append({"number": numbers.get(version_id), "robots": lines, "total": total})
    return {"tasks": [task_names[t] for t in task_ids], "versions": versions,
            "hidden_versions": hidden}
