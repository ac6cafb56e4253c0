"""The figures supervisors decide on, read from the database: evaluation scores with Wilson intervals, online
intervention rates, the canary's comparison with the deployed version, and any version's online record against
the version it replaced. Each returns plain JSON-ready dicts: the same figures are rendered on the pages and
stored with every decision in its audit row.

Online success here is *autonomous* success, the definition every page uses: outcome success with no
intervention step of any source (gate, operator) in the episode. With the expert gate on, plain success mostly
measures the expert."""
from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Q, Sum

from core.stats import Rate
from fleet.models import ASSISTED_SUCCESS, AUTONOMOUS_SUCCESS, Episode, Task
from governance.models import Evaluation, EvaluationItem, Rollout


def _side(successes: int, episodes: int, assisted: int, **extra) -> dict:
    """One side of a comparison: autonomous success (`successes`) with its Wilson interval, which decisions are
    made on, and assisted success beside it."""
    side = Rate(successes, episodes).as_dict()
    return {**side, "low": round(side["low"], 4), "high": round(side["high"], 4), "assisted_successes": assisted,
            "assisted_rate": assisted / episodes if episodes else None, **extra}


def separation(candidate: dict, deployed: dict | None) -> str:
    """"better" / "worse" when the two Wilson intervals do not overlap, else ""."""
    if not deployed or not candidate["episodes"] or not deployed["episodes"]:
        return ""
    if candidate["low"] > deployed["high"]:
        return "better"
    if candidate["high"] < deployed["low"]:
        return "worse"
    return ""


def evaluation_side(version, task, seeds) -> dict:
    """The version's evaluation episodes on this task and these seeds: autonomous success and its interval,
    assisted success (an operator may take over an evaluation episode; the gate is off), mean steps to an
    autonomous success."""
    items = EvaluationItem.objects.filter(version=version, task=task, seed__in=list(seeds), episode__isnull=False)
    counts = Episode.objects.filter(pk__in=items.values("episode")).aggregate(
        n=Count("id"), s=Count("id", filter=AUTONOMOUS_SUCCESS), a=Count("id", filter=ASSISTED_SUCCESS),
        steps=Sum("steps", filter=AUTONOMOUS_SUCCESS))
    return _side(counts["s"], counts["n"], counts["a"],
                 mean_steps=round(counts["steps"] / counts["s"], 1) if counts["s"] else None)


def online_intervention(version, tasks) -> dict:
    """Per task: the version's online episodes and the share of them in which someone took over."""
    counts = (Episode.objects.filter(source=Episode.Source.ONLINE, policy_version=version, task__in=tasks)
              .values("task__env_name").annotate(n=Count("id"), helped=Count("id", filter=Q(intervention_steps__gt=0))))
    return {row["task__env_name"]: {"online_episodes": row["n"], "intervention_rate": row["helped"] / row["n"]}
            for row in counts}


def comparison(evaluation: Evaluation) -> dict:
    """Candidate vs the evaluation's baseline (the deployed version when it started), per task, on the same seeds."""
    tasks = list(evaluation.tasks.order_by("env_name"))
    candidate, baseline = evaluation.candidate, evaluation.baseline
    online = {candidate.pk: online_intervention(candidate, tasks)}
    if baseline is not None:
        online[baseline.pk] = online_intervention(baseline, tasks)
    rows = []
    totals = {"candidate": [0, 0, 0], "deployed": [0, 0, 0]}
    for task in tasks:
        none = {"online_episodes": 0, "intervention_rate": None}
        cand = {**evaluation_side(candidate, task, evaluation.seeds), **online[candidate.pk].get(task.env_name, none)}
        dep = None
        if baseline is not None:
            dep = {**evaluation_side(baseline, task, evaluation.seeds), **online[baseline.pk].get(task.env_name, none)}
            for k, name in enumerate(("successes", "episodes", "assisted_successes")):
                totals["deployed"][k] += dep[name]
        for k, name in enumerate(("successes", "episodes", "assisted_successes")):
            totals["candidate"][k] += cand[name]
        rows.append({"task": task.env_name, "candidate": cand, "deployed": dep, "separation": separation(cand, dep)})
    overall = {"candidate": _side(*totals["candidate"])}
    if baseline is not None:
        overall["deployed"] = _side(*totals["deployed"])
    done, needed = evaluation.progress()
    return {"candidate": candidate.number, "deployed": baseline.number if baseline else None,
            "episodes_per_task": evaluation.episodes_per_task, "tasks": rows, "overall": overall,
            "done": done, "needed": needed}


def canary_analysis(rollout) -> dict:
    """The canary's online episodes against the deployed version's, since the canary started, on the tasks both ran.

    Success here is autonomous success (no intervention in the episode), as everywhere: with the expert gate on,
    success with help mostly measures the expert; assisted success is reported beside it. Verdict: "waiting" (too few episodes), "worse" (the deployed version's rate exceeds
    the canary's by more than GOVERNANCE_CANARY_MARGIN) or "ready" (not worse after enough episodes).
    """
    from learner.models import PolicyVersion

    candidate = rollout.version
    deployed = PolicyVersion.deployed()
    canary_robots = list(rollout.robots.values_list("pk", flat=True))
    since = rollout.created_at

    def per_task(queryset):
        counts = (queryset.filter(source=Episode.Source.ONLINE, started_at__gte=since).values("task__env_name")
                  .annotate(n=Count("id"), s=Count("id", filter=AUTONOMOUS_SUCCESS),
                            a=Count("id", filter=ASSISTED_SUCCESS),
                            helped=Count("id", filter=Q(intervention_steps__gt=0))))
        return {row["task__env_name"]: row for row in counts}

    cand = per_task(Episode.objects.filter(policy_version=candidate, robot__in=canary_robots))
    dep = per_task(Episode.objects.filter(policy_version=deployed)) if deployed else {}
    shared = sorted(set(cand) & set(dep))
    rows, totals = [], {"candidate": [0, 0, 0, 0], "deployed": [0, 0, 0, 0]}
    for task in shared:
        c, d = cand[task], dep[task]
        for name, row in (("candidate", c), ("deployed", d)):
            for k, count in enumerate(("s", "n", "a", "helped")):
                totals[name][k] += row[count]
        c_side, d_side = _side(c["s"], c["n"], c["a"]), _side(d["s"], d["n"], d["a"])
        rows.append({"task": task, "candidate": c_side, "deployed": d_side, "separation": separation(c_side, d_side)})

    def overall(name):
        s, n, assisted, helped = totals[name]
        return _side(s, n, assisted, intervention_rate=helped / n if n else None)

    c_all, d_all = overall("candidate"), overall("deployed")
    margin, minimum = settings.GOVERNANCE_CANARY_MARGIN, settings.GOVERNANCE_CANARY_MIN_EPISODES
    difference = (d_all["rate"] - c_all["rate"]) if c_all["episodes"] and d_all["episodes"] else None
    if c_all["episodes"] < minimum or d_all["episodes"] < minimum:
        verdict = "waiting"
    elif difference > margin:
        verdict = "worse"
    else:
        verdict = "ready"
    return {"rollout": rollout.pk, "candidate": candidate.number, "deployed": deployed.number if deployed else None,
            "since": since.isoformat(), "robots": sorted(rollout.robots.values_list("name", flat=True)),
            "tasks": rows, "overall": {"candidate": c_all, "deployed": d_all},
            "difference": round(difference, 4) if difference is not None else None,
            "margin": margin, "min_episodes": minimum, "verdict": verdict}


def replaced_version(version):
    """The version this one replaced, in deployment order: the version of the newest whole-fleet rollout created
    before this version's first rollout (its canary, or its deployment). For a version never rolled out, the one
    deployed now (None if that is itself or nothing). Rollout ids follow the order of decisions: each is created
    under the rollout lock."""
    from learner.models import PolicyVersion

    first = Rollout.objects.filter(version=version).order_by("pk").values_list("pk", flat=True).first()
    if first is None:
        deployed = PolicyVersion.deployed()
        return deployed if deployed is not None and deployed.pk != version.pk else None
    before = (Rollout.objects.filter(stage=Rollout.Stage.FLEET, pk__lt=first).exclude(version=version)
              .select_related("version").order_by("-pk").first())
    return before.version if before is not None else None


def _online_side(n: int, s: int, assisted: int, interventions: int, success_steps: int) -> dict:
    return _side(s, n, assisted, interventions_per_episode=round(interventions / n, 3) if n else None,
                 mean_steps=round(success_steps / s, 1) if s else None)


# Each side of an online comparison reads at most this many of its version's newest online episodes: enough for
# a Wilson interval about ±1.4 points wide, and a page that costs the same for a version the fleet ran for a
# month (reading all 100k+ of its episodes took 0.3-0.4 s, a parallel scan of the whole table).
ONLINE_EPISODES = 5000
AUTONOMOUS = "intervention_steps = 0 AND intervention_count = 0"  # with outcome success: AUTONOMOUS_SUCCESS
_NEWEST = f"""(SELECT task_id, outcome, intervention_steps, intervention_count, steps, started_at, finished_at
               FROM {Episode._meta.db_table} WHERE policy_version_id = %s AND source = %s
               ORDER BY finished_at DESC LIMIT %s)"""
_ONLINE_SQL = f"""
    SELECT side, task_id, count(*) AS n,
           count(*) FILTER (WHERE outcome = %s AND {AUTONOMOUS}) AS s,
           count(*) FILTER (WHERE outcome = %s AND NOT ({AUTONOMOUS})) AS a,
           coalesce(sum(intervention_count), 0)::bigint AS i,
           coalesce(sum(steps) FILTER (WHERE outcome = %s AND {AUTONOMOUS}), 0)::bigint AS ss,
           min(started_at) AS first, max(finished_at) AS last
    FROM (SELECT 'version' AS side, * FROM {_NEWEST} AS mine
          UNION ALL
          SELECT 'replaced' AS side, * FROM {_NEWEST} AS theirs) AS newest
    GROUP BY side, task_id
"""


def _online_counts(version_id: int, replaced_id: int | None) -> dict[str, dict[int, dict]]:
    """{"version" / "replaced": {task id: {n, s, a, i, ss, first, last}}} over each version's newest online
    episodes."""
    from django.db import connection

    success, online = Episode.Outcome.SUCCESS.value, Episode.Source.ONLINE.value
    with connection.cursor() as cursor:
        cursor.execute(_ONLINE_SQL, [success, success, success, version_id, online, ONLINE_EPISODES,
                                     replaced_id, online, ONLINE_EPISODES])
        columns = [c.name for c in cursor.description]
        rows = [dict(zip(columns, values)) for values in cursor.fetchall()]
    counts: dict[str, dict[int, dict]] = {"version": {}, "replaced": {}}
    for row in rows:
        counts[row.pop("side")][row.pop("task_id")] = row
    return counts


def _span(counts: dict[int, dict]) -> dict | None:
    """When the side's episodes ran, and how many there are (all, or the newest ONLINE_EPISODES)."""
    if not counts:
        return None
    episodes = sum(c["n"] for c in counts.values())
    return {"first": min(c["first"] for c in counts.values()).isoformat(),
            "last": max(c["last"] for c in counts.values()).isoformat(),
            "episodes": episodes, "newest_only": episodes >= ONLINE_EPISODES}


def online_comparison(version, replaced=None) -> dict:
    """The version's online episodes against those of the version it replaced (replaced_version, unless given),
    per task and pooled over the tasks both ran: autonomous success with its Wilson 95 % interval, episodes,
    assisted success beside it, interventions (takeovers) per episode and mean steps of the autonomous successes.

    One statement: each side is its version's newest ONLINE_EPISODES online episodes, read backwards along the
    (policy_version, -finished_at) index, grouped by task. Pooled, not stratified: robots draw tasks at random,
    so the two versions' task mixes are close; the per-task rows are the like-for-like comparison."""
    replaced = replaced if replaced is not None else replaced_version(version)
    counts = _online_counts(version.pk, replaced.pk if replaced is not None else None)
    mine, theirs = counts["version"], counts["replaced"]
    names = {pk: task.env_name for pk, task in Task.objects.in_bulk(set(mine) | set(theirs)).items()}
    shared = (set(mine) & set(theirs)) if replaced is not None else set(mine)
    rows, totals = [], {"version": [0, 0, 0, 0, 0], "replaced": [0, 0, 0, 0, 0]}
    for task in sorted(shared, key=names.get):
        sides = {}
        for name, side in (("version", mine), ("replaced", theirs)):
            if task in side:
                figures = [side[task][key] for key in ("n", "s", "a", "i", "ss")]
                totals[name] = [a + b for a, b in zip(totals[name], figures)]
            sides[name] = _online_side(*figures) if task in side else None
        rows.append({"task": names[task], **sides, "separation": separation(sides["version"], sides["replaced"])})
    overall = {"version": _online_side(*totals["version"]),
               "replaced": _online_side(*totals["replaced"]) if replaced is not None else None}
    return {"version": version.number, "replaced": replaced.number if replaced is not None else None,
            "tasks": rows, "overall": overall, "separation": separation(overall["version"], overall["replaced"]),
            "only_version": sorted(names[t] for t in set(mine) - shared),
            "only_replaced": sorted(names[t] for t in set(theirs) - shared),
            "span": {"version": _span(mine), "replaced": _span(theirs) if replaced is not None else None},
            "limit": ONLINE_EPISODES}
