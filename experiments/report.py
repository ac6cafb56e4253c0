"""A sweep's results, aggregated across repeats (JSON) and drawn as a self-contained HTML report with Plotly.

Every number comes from the runs' records: success at each evaluation point (the base at robot time 0, then every
k-th published version), time to threshold (the first robot time at which two consecutive evaluations reach it),
the gain from the base to the last version, throughput and intervention rate over robot time, and each run's
budget and clock. Intervals are Student-t 95 % across repeats (`core.stats.mean_interval`); a single repeat shows
its Wilson interval over its episodes instead, and the report says n.
"""
from __future__ import annotations

import html
import json
import statistics
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from core.stats import mean_interval, wilson
from experiments.sweeps import SEED_FIGURES, TARGETS, THRESHOLD


def time_to_threshold(evaluations: list[dict], threshold: float = THRESHOLD) -> float | None:
    """The robot time of the first of two consecutive evaluations at or above the threshold (None: not reached;
    a last evaluation that reaches it alone does not count)."""
    for first, second in zip(evaluations, evaluations[1:]):
        if first["success"] >= threshold and second["success"] >= threshold:
            return first["robot_seconds"]
    return None


def _interval(values: list[float], pooled: tuple[int, int] | None = None) -> dict:
    mean, low, high = mean_interval(values)
    if len(values) == 1 and pooled is not None:
        low, high = wilson(*pooled)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def _pooled(evaluation: dict, tasks: list[str]) -> tuple[int, int]:
    """The episodes behind an evaluation's headline success (the tasks the fleet runs online), pooled."""
    return (sum(evaluation["tasks"][t]["successes"] for t in tasks),
            sum(evaluation["tasks"][t]["episodes"] for t in tasks))


def arm_summary(arm: str, records: list[dict]) -> dict:
    spec = records[0]["spec"]
    online = spec["online_tasks"] or spec["tasks"]
    points = min(len(r["evaluations"]) for r in records)  # repeats publish on the same clock: same points
    curve = []
    for i in range(points):
        evals = [r["evaluations"][i] for r in records]
        curve.append({"robot_seconds": statistics.mean(e["robot_seconds"] for e in evals),
                      "success": _interval([e["success"] for e in evals], _pooled(evals[0], online))})
    reached = [time_to_threshold(r["evaluations"]) for r in records]
    base = [r["evaluations"][0] for r in records]
    final = [r["evaluations"][-1] for r in records]
    tasks = {task: {"base": statistics.mean(e["tasks"][task]["successes"] / e["tasks"][task]["episodes"]
                                            for e in base),
                    "final": _interval([e["tasks"][task]["successes"] / e["tasks"][task]["episodes"]
                                        for e in final],
                                       (final[0]["tasks"][task]["successes"], final[0]["tasks"][task]["episodes"]))}
             for task in spec["tasks"]}
    gains = [100 * (f["success"] - b["success"]) for f, b in zip(final, base)]
    bins = min((len(r["series"]) for r in records), default=0)
    series = [{"robot_seconds": statistics.mean(r["series"][i]["robot_seconds"] for r in records),
               "throughput": statistics.mean(r["series"][i]["autonomous_successes_per_robot_hour"] for r in records),
               "intervention_rate": statistics.mean(r["series"][i]["intervention_rate"] for r in records)}
              for i in range(bins)]
    shift = _shift_summary(records, points) if spec.get("scene_shift") else None
    budget_keys = ("robot_steps", "expert_steps", "online_episodes", "learner_steps", "demonstrations",
                   "pretraining_steps")
    return {
        "arm": arm, "spec": spec, "repeats": len(records),
        "runs": [{"repeat": r["repeat"], "valid": r["clock"]["valid"], "problems": r["clock"]["problems"],
                  "clock": r["clock"], "finished": r["finished"], "base": r["evaluations"][0]["success"],
                  "final": r["evaluations"][-1]["success"], "time_to_threshold": t,
                  "budget": r["budget"]} for r, t in zip(records, reached)],
        "curve": curve, "series": series, "tasks": tasks, "shift": shift,
        "guided": {beta: statistics.mean(r["evaluations"][-1]["success_guided"][beta] for r in records)
                   for beta in records[0]["evaluations"][-1].get("success_guided", {})},
        "base": _interval([b["success"] for b in base], _pooled(base[0], online)),
        "final": _interval([f["success"] for f in final], _pooled(final[0], online)),
        "gain_points": _interval(gains),
        "time_to_threshold": {"reached": sum(t is not None for t in reached), "of": len(reached),
                              "budget_seconds": spec["robot_minutes"] * 60,
                              "seconds": _interval([t for t in reached if t is not None])
                              if any(t is not None for t in reached) else None},
        "budget": {k: statistics.mean(r["budget"][k] for r in records) for k in budget_keys},
        "wall_seconds": statistics.mean(r["budget"]["wall_seconds"]["total"] for r in records),
        "valid_runs": sum(r["clock"]["valid"] for r in records),
    }


def _shift_summary(records: list[dict], points: int) -> dict:
    """Before and after the move to the new site, per repeat then across repeats: the success the fleet had on
    the training scenes just before the move (its last evaluation before it), the same version on the new scenes
    (the drop), the last version on the new scenes (the recovery), and the tasks never run online (kept?)."""
    def at(record, key, index):
        return record["evaluations"][index].get(key)

    pre = [max(i for i, e in enumerate(r["evaluations"]) if e["robot_seconds"] <= (r.get("shifted_at") or 0))
           for r in records]
    out = {"at_seconds": statistics.mean(r.get("shifted_at") or 0 for r in records),
           "before": _interval([at(r, "success", i) for r, i in zip(records, pre)]),
           "dropped_to": _interval([at(r, "success_shifted", i) for r, i in zip(records, pre)]),
           "recovered_to": _interval([at(r, "success_shifted", -1) for r in records]),
           "curve_shifted": [{"robot_seconds": statistics.mean(r["evaluations"][i]["robot_seconds"] for r in records),
                              "success": _interval([at(r, "success_shifted", i) for r in records])}
                             for i in range(points)]}
    if all("success_not_online" in r["evaluations"][0] for r in records):
        out["not_online"] = {"base": _interval([at(r, "success_not_online", 0) for r in records]),
                             "before": _interval([at(r, "success_not_online", i) for r, i in zip(records, pre)]),
                             "last": _interval([at(r, "success_not_online", -1) for r in records])}
        out["curve_not_online"] = [
            {"robot_seconds": statistics.mean(r["evaluations"][i]["robot_seconds"] for r in records),
             "success": _interval([at(r, "success_not_online", i) for r in records])} for i in range(points)]
    return out


def _ttt(arm: dict) -> float | None:
    t = arm["time_to_threshold"]
    return t["seconds"]["mean"] if t["seconds"] and t["reached"] == t["of"] else None


def findings(sweep: str, arms: list[dict]) -> list[str]:
    """The sweep's figures against the issue's targets, in words; a miss says so."""
    out = []
    by_name = {a["arm"]: a for a in arms}
    invalid = sum(a["repeats"] - a["valid_runs"] for a in arms)
    if invalid:
        out.append(f"{invalid} run(s) could not keep the declared clock (marked invalid below): their robot time "
                   "is not comparable and the figures that use them are not to be trusted.")
    if sweep == "gains":
        for name, points in (("SOP + HG-DAgger", 30), ("SOP + RECAP", 20)):
            if name in by_name:
                a = by_name[name]
                g = a["gain_points"]["mean"]
                worst = min(t["final"]["mean"] for t in a["tasks"].values())
                extra = f"; lowest task {worst:.2f} (target ≥ 0.9 every task)" if "HG" in name else ""
                out.append(f"{name}: {g:+.0f} points of mean autonomous success (target ≥ +{points}: "
                           f"{'met' if g >= points else 'missed'}){extra}.")
                if a.get("guided"):
                    best = max(a["guided"], key=lambda k: a["guided"][k])
                    out.append(f"{name} with guidance: β = 1 {a['final']['mean']:.2f}; best {best} "
                               f"{a['guided'][best]:.2f} (the last version, mean over repeats).")
        if "BC, equal expert frames" in by_name and "SOP + HG-DAgger" in by_name:
            bc, hg = by_name["BC, equal expert frames"], by_name["SOP + HG-DAgger"]
            out.append(f"Offline BC given HG-DAgger's expert frames reaches {bc['final']['mean']:.2f} against "
                       f"HG-DAgger's {hg['final']['mean']:.2f}.")
    if sweep == "fleet":
        one, four = by_name.get("1 robot"), by_name.get("4 robots")
        if one and four:
            t1, t4 = _ttt(one), _ttt(four)
            if t1 and t4:
                s = t1 / t4
                out.append(f"4 robots reach {THRESHOLD} success {s:.1f}× sooner than 1 robot ({t4 / 60:.1f} against "
                           f"{t1 / 60:.1f} robot-minutes; target ≥ 2.4×, aim 3×: {'met' if s >= 2.4 else 'missed'}).")
            elif t4 and not t1:
                budget = one["time_to_threshold"]["budget_seconds"]
                out.append(f"4 robots reach {THRESHOLD} in {t4 / 60:.1f} robot-minutes; 1 robot did not in every "
                           f"repeat within {budget / 60:.0f}: the speed-up is at least {budget / t4:.1f}×.")
            else:
                out.append(f"4 robots did not reach {THRESHOLD} in every repeat within the budget: no speed-up "
                           "can be stated (target ≥ 2.4×: missed).")
    if sweep == "pretraining":
        online = [a for a in arms if a["spec"]["online"]]
        gains = [a["gain_points"]["mean"] for a in online]
        if online:
            out.append("A gain at every pretraining scale: " + ", ".join(
                f"{a['spec']['base_demos']} demos {g:+.0f} points" for a, g in zip(online, gains))
                + f" ({'met' if all(g > 0 for g in gains) else 'missed'}).")
        by_demos = {a["spec"]["base_demos"]: a for a in arms}
        for a in online:
            more = by_demos.get(4 * a["spec"]["base_demos"])
            if more:
                better = a["final"]["mean"] > more["base"]["mean"]
                out.append(f"{a['spec']['base_demos']} demos + {a['spec']['robot_minutes']:g} robot-minutes online "
                           f"reach {a['final']['mean']:.2f}; {4 * a['spec']['base_demos']} demos offline only "
                           f"{more['base']['mean']:.2f} ({'online wins' if better else 'demonstrations win'}).")
    if sweep == "shift":
        for a in arms:
            sh = a["shift"]
            before, drop, rec = sh["before"]["mean"], sh["dropped_to"]["mean"], sh["recovered_to"]["mean"]
            out.append(f"{a['arm']}: {before:.2f} on the training scenes before the move; the same version "
                       f"{drop:.2f} on the new site ({100 * (drop - before):+.0f} points); the last version "
                       f"{rec:.2f} there after {(a['spec']['robot_minutes'] * 60 - sh['at_seconds']) / 60:.1f} "
                       f"robot-minutes (target within 5 points of {before:.2f}: "
                       f"{'met' if rec >= before - 0.05 else 'missed'}).")
            if kept := sh.get("not_online"):
                out.append(f"Tasks never run online: base {kept['base']['mean']:.2f}, before the move "
                           f"{kept['before']['mean']:.2f}, at the end {kept['last']['mean']:.2f} "
                           f"({'kept' if kept['last']['mean'] >= kept['base']['mean'] - 0.05 else 'eroded'}).")
    if sweep == "ablations":
        for a in arms:
            out.append(f"{a['arm']}: {a['base']['mean']:.2f} → {a['final']['mean']:.2f} "
                       f"({a['gain_points']['mean']:+.0f} points).")
    return out


def summarise(sweep: str, quick: bool, arms: list[tuple[str, list[dict]]]) -> dict:
    summaries = [arm_summary(name, records) for name, records in arms if records]
    return {"sweep": sweep, "quick": quick, "threshold": THRESHOLD,
            "generated": datetime.now(dt_timezone.utc).isoformat(timespec="seconds"),
            "seed": SEED_FIGURES.get(sweep, ""), "target": TARGETS.get(sweep, ""),
            "arms": summaries, "findings": findings(sweep, summaries)}


# ---- HTML ----

def _figures(summary: dict) -> list[tuple[str, object]]:
    import plotly.graph_objects as go

    figures = []
    success = go.Figure()
    for arm in summary["arms"]:
        x = [p["robot_seconds"] / 60 for p in arm["curve"]]
        y = [p["success"]["mean"] for p in arm["curve"]]
        success.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=arm["arm"],
            error_y={"type": "data", "symmetric": False,
                     "array": [p["success"]["high"] - p["success"]["mean"] for p in arm["curve"]],
                     "arrayminus": [p["success"]["mean"] - p["success"]["low"] for p in arm["curve"]]}))
    success.add_hline(y=summary["threshold"], line_dash="dot", annotation_text=f"threshold {summary['threshold']}")
    success.update_layout(title="Autonomous success on held-out seeds vs robot time (mean, 95 % interval)",
                          xaxis_title="robot time (min)", yaxis_title="success", yaxis_range=[0, 1.05])
    figures.append(("success", success))
    for arm in summary["arms"]:
        if not arm.get("shift"):
            continue
        sh = arm["shift"]
        fig = go.Figure()
        for name, curve in (("online tasks, training scenes", arm["curve"]),
                            ("online tasks, new site", sh["curve_shifted"]),
                            ("tasks never run online", sh.get("curve_not_online"))):
            if curve:
                fig.add_trace(go.Scatter(x=[p["robot_seconds"] / 60 for p in curve],
                                         y=[p["success"]["mean"] for p in curve], mode="lines+markers", name=name))
        fig.add_vline(x=sh["at_seconds"] / 60, line_dash="dash", annotation_text="the fleet moves")
        fig.update_layout(title=f"{arm['arm']}: before and after the move (mean over repeats)",
                          xaxis_title="robot time (min)", yaxis_title="success", yaxis_range=[0, 1.05])
        figures.append(("shift", fig))
    online = [a for a in summary["arms"] if a["spec"]["online"]]
    if online:
        bars = go.Figure()
        names, means, up, down, labels = [], [], [], [], []
        for arm in online:
            t = arm["time_to_threshold"]
            names.append(arm["arm"])
            if t["seconds"]:
                s = t["seconds"]
                means.append(s["mean"] / 60)
                up.append((s["high"] - s["mean"]) / 60)
                down.append((s["mean"] - s["low"]) / 60)
            else:
                means.append(t["budget_seconds"] / 60)
                up.append(0)
                down.append(0)
            labels.append(f"reached in {t['reached']}/{t['of']}")
        bars.add_trace(go.Bar(x=names, y=means, text=labels, error_y={"type": "data", "symmetric": False,
                                                                     "array": up, "arrayminus": down}))
        bars.update_layout(title=f"Robot time to {summary['threshold']} success (two consecutive evaluations; "
                                 "not reached: the budget)", yaxis_title="robot time (min)")
        figures.append(("time-to-threshold", bars))
        for key, title, axis in (("throughput", "Throughput: autonomous successes per robot-hour",
                                  "successes / robot-hour"),
                                 ("intervention_rate", "Intervention rate: share of online steps under the expert",
                                  "share of steps")):
            fig = go.Figure()
            for arm in online:
                fig.add_trace(go.Scatter(x=[p["robot_seconds"] / 60 for p in arm["series"]],
                                         y=[p[key] for p in arm["series"]], mode="lines+markers", name=arm["arm"]))
            fig.update_layout(title=title, xaxis_title="robot time (min)", yaxis_title=axis)
            figures.append((key, fig))
    return figures


def _fmt_interval(i: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not i:
        return "—"
    return (f"{i['mean'] * scale:.{digits}f} [{i['low'] * scale:.{digits}f}, {i['high'] * scale:.{digits}f}]"
            f" n={i['n']}")


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render_html(summary: dict, plotly_js: str) -> str:
    """The report as one HTML file: Plotly inlined, the figures' data inlined, nothing fetched."""
    arms = summary["arms"]
    gains = _table(["arm", "base", "last version", "change (points)", "lowest task", "runs valid"],
                   [[a["arm"], _fmt_interval(a["base"]), _fmt_interval(a["final"]),
                     _fmt_interval(a["gain_points"], digits=0),
                     f"{min(t['final']['mean'] for t in a['tasks'].values()):.2f}",
                     f"{a['valid_runs']}/{a['repeats']}"] for a in arms])
    tasks = _table(["arm", "task", "base", "last version"],
                   [[a["arm"], task, f"{t['base']:.2f}", _fmt_interval(t["final"])]
                    for a in arms for task, t in a["tasks"].items()])
    ttt = _table(["arm", f"robot time to {summary['threshold']} (min)", "reached"],
                 [[a["arm"], _fmt_interval(a["time_to_threshold"]["seconds"], 1 / 60, 1)
                   if a["time_to_threshold"]["seconds"] else "not reached",
                   f"{a['time_to_threshold']['reached']}/{a['time_to_threshold']['of']}"]
                  for a in arms if a["spec"]["online"]])
    budget = _table(["arm", "robot steps", "expert-controlled steps", "online episodes", "learner steps",
                     "demonstrations", "pretraining steps", "wall time per run (min)"],
                    [[a["arm"], f"{a['budget']['robot_steps']:,.0f}", f"{a['budget']['expert_steps']:,.0f}",
                      f"{a['budget']['online_episodes']:,.0f}", f"{a['budget']['learner_steps']:,.0f}",
                      f"{a['budget']['demonstrations']:,.0f}", f"{a['budget']['pretraining_steps']:,.0f}",
                      f"{a['wall_seconds'] / 60:.1f}"] for a in arms])
    runs = _table(["arm", "repeat", "valid", "pace achieved", "learner rate achieved", "duty", "base", "last",
                   "finished", "why invalid"],
                  [[a["arm"], r["repeat"], "yes" if r["valid"] else "NO",
                    f"{100 * r['clock'].get('pace_achieved', 1):.0f} %" if a["spec"]["online"] else "—",
                    f"{100 * r['clock'].get('learner_rate_achieved', 1):.0f} %" if a["spec"]["online"] else "—",
                    f"{100 * r['clock'].get('duty', 0):.0f} %" if a["spec"]["online"] else "—",
                    f"{r['base']:.2f}", f"{r['final']:.2f}", r["finished"], "; ".join(r["problems"])]
                   for a in arms for r in a["runs"]])
    spec_rows = [[a["arm"], ", ".join(f"{k}={v}" for k, v in sorted(a["spec"].items())
                                      if k not in ("arm", "tasks"))] for a in arms]
    figures = "".join(f'<div class="figure" id="figure-{name}">{fig.to_html(full_html=False, include_plotlyjs=False)}'
                      f"</div>" for name, fig in _figures(summary))
    findings = "".join(f"<li>{html.escape(f)}</li>" for f in summary["findings"]) or "<li>no figures yet</li>"
    data = json.dumps(summary).replace("<", "\\u003c")  # inert inside the script element
    title = f"Experiment: {summary['sweep']}{' (quick)' if summary['quick'] else ''}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;
margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f4f4f4}}
.quick{{background:#fff3cd;padding:.5em}}</style>
<script>{plotly_js}</script></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {html.escape(summary['generated'])} from {sum(a['repeats'] for a in arms)} run(s) on the real system.
Success is autonomous success (the policy alone, no expert or operator) on held-out seeds that no demonstration,
online episode or governance evaluation uses. Time is robot time.</p>
{'<p class="quick">Quick mode: tiny budgets that show the machinery works, not what the system learns.</p>'
 if summary['quick'] else ''}
<h2>Findings</h2><ul id="findings">{findings}</ul>
<p><b>Target:</b> {html.escape(summary['target'])}<br><b>The seed paper:</b> {html.escape(summary['seed'])}</p>
<h2>Gains</h2>{gains}
{figures}
<h2>Time to threshold</h2>{ttt}
<h2>Per task</h2>{tasks}
<h2>Budget (mean per run)</h2>{budget}
<h2>Runs and their clocks</h2>{runs}
<h2>Specs</h2>{_table(['arm', 'spec'], spec_rows)}
<script type="application/json" id="summary">{data}</script>
</body></html>
"""


def plotly_js() -> str:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()
