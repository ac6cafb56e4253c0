from django.contrib.auth.decorators import permission_required
from django.shortcuts import render

from learner.models import PolicyVersion, TrainingMetric, TrainingRun

MAX_POINTS = 600  # curve points sent with the page; the socket extends them live


def metric_point(metric: TrainingMetric) -> dict:
    """One point of the learner's curves, as sent with the page and pushed live."""
    return {"step": metric.step, "loss": metric.loss, "samples_per_second": round(metric.samples_per_second),
            "staleness_mean": metric.staleness_mean, "staleness_max": metric.staleness_max, "tasks": metric.tasks,
            "at": metric.created_at.isoformat()}


@permission_required("learner.view_policyversion", raise_exception=True)
def learner(request):
    run = TrainingRun.objects.select_related("base_version").first()
    points = []
    if run is not None:
        metrics = run.metrics.order_by("step")
        count = metrics.count()
        stride = max(1, count // MAX_POINTS)  # an evenly thinned history, always ending at the latest point
        ids = list(metrics.values_list("pk", flat=True))[::-1][::stride][::-1]
        points = [metric_point(m) for m in TrainingMetric.objects.filter(pk__in=ids).order_by("step")]
    versions = [{"number": v.number, "state": v.state, "algorithm": v.algorithm, "at": v.created_at.isoformat(),
                 "train_steps": v.train_steps}
                for v in PolicyVersion.objects.order_by("-number")[:200]][::-1]
    return render(request, "learner/learner.html", {"run": run, "points": points, "versions": versions,
                                                    "latest": points[-1] if points else None})


@permission_required("learner.view_policyversion", raise_exception=True)
def versions(request):
    rows = PolicyVersion.objects.select_related("parent")[:200]
    return render(request, "learner/versions.html", {"versions": rows})
