"""Label counts by failure mode, per policy version or per task: what annotators found, for the dashboard and
the rollout comparison page."""
from __future__ import annotations

from django.db.models import Count

from review.models import EpisodeLabel, FailureMode

GROUPS = {"version": "episode__policy_version__number", "task": "episode__task__env_name"}


def mode_names() -> dict[str, str]:
    """Code -> display name (a code keeps one name across tasks unless a supervisor renamed it in one)."""
    names = {code: name for code, name in FailureMode.DEFAULTS}
    names.update(FailureMode.objects.values_list("code", "name"))
    return names


def label_counts(*, by: str = "version", version=None, task=None, since=None, versions=None) -> dict:
    """Counts of labels per failure mode, one row per version (by="version") or per task (by="task").

    Filters: `version` (a PolicyVersion or its number), `versions` (numbers, e.g. the two a comparison page
    shows), `task` (a Task or its env_name), `since` (labelled at or after). Returns
    {"by", "modes": [(code, name)], "rows": [{"key", "counts": [n per mode], "total"}], "total"}."""
    if by not in GROUPS:
        raise ValueError(f"label counts are grouped by {' or '.join(GROUPS)}, not {by!r}")
    labels = EpisodeLabel.objects.all()
    if version is not None:
        labels = labels.filter(episode__policy_version__number=getattr(version, "number", version))
    if versions is not None:
        labels = labels.filter(episode__policy_version__number__in=[getattr(v, "number", v) for v in versions])
    if task is not None:
        labels = labels.filter(episode__task__env_name=getattr(task, "env_name", task))
    if since is not None:
        labels = labels.filter(created_at__gte=since)
    field = GROUPS[by]
    grouped = labels.values(field, "failure_mode").annotate(n=Count("pk")).order_by()
    names = mode_names()
    table: dict = {}
    for row in grouped:
        table.setdefault(row[field], {})[row["failure_mode"]] = row["n"]
    default_order = [code for code, _ in FailureMode.DEFAULTS]
    used = sorted({mode for counts in table.values() for mode in counts},
                  key=lambda code: (default_order.index(code) if code in default_order else len(default_order), code))
    keys = sorted(table, key=lambda k: (k is None, -(k or 0)) if by == "version" else (k is None, k or ""))
    rows = [{"key": (f"v{key}" if by == "version" and key is not None else key) or "—",
             "counts": [table[key].get(code, 0) for code in used], "total": sum(table[key].values())}
            for key in keys]
    return {"by": by, "modes": [(code, names.get(code, code)) for code in used], "rows": rows,
            "total": sum(r["total"] for r in rows)}
