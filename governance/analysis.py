"""The figures supervisors decide on, read from the database: evaluation scores with Wilson intervals, online
intervention rates, and the canary's comparison with the deployed version. Each returns plain JSON-ready dicts:
the same figures are rendered on the pages and stored with every decision in its audit row."""
from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Q, Sum

from core.stats import Rate
from fleet.models import ASSISTED_SUCCESS, AUTONOMOUS_SUCCESS, Episode
from governance.models import Evaluation, EvaluationItem


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
