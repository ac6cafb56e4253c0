"""What the learner page draws: each training run's curves over a time window, one line per run, and its restarts.

Curves are plotted by time, not by learner step. A restart (a slice that rebuilt the trainer from the run's saved
state) repeats the steps trained since the last save; their first recording was lost with the process. Those lost
points are left out (`TrainingMetric.resumed_from` says which), so each run is one line that never runs backwards,
and the restart is marked where it happened (docs/decisions.md, "Learner and checkpoints").

A week of metrics is about six million rows (ten a second), so a window is read as at most POINTS time buckets per
run, each answered by one probe of the (run, created_at) index for its last point that was not lost.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Mod

from fleet.dashboard import floor_to
from learner.models import PolicyVersion, TrainingMetric, TrainingRun

POINTS = 300  # per run and curve

DEFINITIONS = {
    "step": "The run's learner step (gradient steps taken) at its latest point.",
    "loss": "The training loss of the batch at the latest point (the algorithm's loss, e.g. HG-DAgger's "
            "behaviour-cloning loss).",
    "samples_per_second": "Training samples per second since the run's previous point (batch size x steps / "
                          "seconds).",
    "staleness": "Staleness of the online frames in the latest batch: how many versions older than the learner's "
                 "the versions that produced them are (mean / max).",
    "share": "The SOP resampler's online share w_on per task: the fraction of each task's batch drawn from online "
             "episodes, from the recent online and offline losses, clipped to [0.2, 0.8]. For a RECAP run, dashed: "
             "the share of online frames whose advantage cleared the threshold (before expert frames are forced "
             "positive), which the threshold aims to hold at 30 %.",
    "buffer": "Frames in the learner's buffer per task and source (online episodes; offline demonstrations).",
    "versions": "Versions the learner published, by number, at the time each was published.",
    "restart": "A restart: the learner rebuilt its trainer from the run's saved state (after a crash, or in "
               "another process). Steps trained after the last save were lost and trained again; their first "
               "points are not drawn.",
}

# The last point of each time bucket of one run that a later restart did not make lost.
THINNED = f"""
SELECT m.* FROM generate_series(%(first)s::timestamptz, %(end)s::timestamptz, %(width)s::interval) AS b(t)
CROSS JOIN LATERAL (
    SELECT * FROM {TrainingMetric._meta.db_table} AS m
    WHERE m.run_id = %(run)s AND m.created_at >= greatest(b.t, %(start)s) AND m.created_at < least(b.t + %(width)s,
                                                                                                   %(end)s)
      AND NOT EXISTS (SELECT FROM {TrainingMetric._meta.db_table} AS r
                      WHERE r.run_id = m.run_id AND r.resumed_from IS NOT NULL AND r.created_at > m.created_at
                        AND r.resumed_from < m.step)
    ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS m
ORDER BY m.created_at, m.id
"""


def bucket_width(start: datetime, end: datetime) -> timedelta:
    """Whole seconds, so that POINTS buckets cover the window (static/js/learner.js thins live points alike)."""
    return timedelta(seconds=max(1, math.ceil((end - start).total_seconds() / POINTS)))


def _restarts(run: TrainingRun, start: datetime, end: datetime) -> list[dict]:
    before = (TrainingMetric.objects.filter(run=OuterRef("run"), created_at__lt=OuterRef("created_at"))
              .order_by("-created_at", "-id").values("step")[:1])
    rows = (TrainingMetric.objects.filter(run=run, resumed_from__isnull=False, created_at__gte=start,
                                          created_at__lt=end).annotate(before=Subquery(before)).order_by("created_at"))
    return [{"at": row.created_at.isoformat(), "step": row.step, "resumed_from": row.resumed_from,
             "lost": max(0, (row.before or 0) - row.resumed_from)} for row in rows]


def curves(start: datetime, end: datetime) -> dict:
    """The runs with points in [start, end), oldest first, each with its thinned points and its restarts."""
    width = bucket_width(start, end)
    in_window = TrainingMetric.objects.filter(run=OuterRef("pk"), created_at__gte=start, created_at__lt=end)
    runs = []
    for run in TrainingRun.objects.filter(Exists(in_window)).order_by("created_at"):
        points = TrainingMetric.objects.raw(THINNED, {"first": floor_to(start, width), "start": start, "end": end,
                                                      "width": width, "run": run.pk})
        runs.append({"id": run.pk, "label": f"run {run.pk} ({run.algorithm})", "status": run.status,
                     "batch_size": (run.config or {}).get("batch_size"),
                     "points": [point.point() for point in points], "restarts": _restarts(run, start, end)})
    return {"width_seconds": width.total_seconds(), "runs": runs}


def published(start: datetime, end: datetime) -> list[dict]:
    """The versions published in [start, end), at most about POINTS of them (every k-th number, the newest kept):
    a continuously deploying learner publishes one every few seconds."""
    rows = PolicyVersion.objects.filter(created_at__gte=start, created_at__lt=end)
    bounds = rows.aggregate(low=Min("number"), high=Max("number"), count=Count("id"))
    if not bounds["count"]:
        return []
    stride = max(1, math.ceil(bounds["count"] / POINTS))
    chosen = rows.annotate(slot=Mod(F("number") - bounds["low"], stride)).filter(
        Q(slot=0) | Q(number=bounds["high"])).order_by("number")
    return [{"number": v.number, "state": v.state, "algorithm": v.algorithm, "at": v.created_at.isoformat(),
             "train_steps": v.train_steps} for v in chosen]
