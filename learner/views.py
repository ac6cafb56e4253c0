from django.contrib.auth.decorators import permission_required
from django.shortcuts import render
from django.utils import timezone

from fleet.forms import WindowForm
from learner.dashboard import DEFINITIONS, curves, published
from learner.models import PolicyVersion, TrainingRun


class LearnerWindowForm(WindowForm):
    default = "6h"


@permission_required("learner.view_policyversion", raise_exception=True)
def learner(request):
    """The learner's curves over the picked window, one line per training run, restarts marked; the KPIs are the
    newest run's last point (an invalid window: its errors above the default one, status 400)."""
    form = LearnerWindowForm(request.GET or None)
    now = timezone.now()
    window = form.chart_window(now)
    data = curves(window.start, window.data_end)
    latest_run = data["runs"][-1] if data["runs"] else None
    latest = latest_run["points"][-1] if latest_run and latest_run["points"] else None
    steps_per_second = (round(latest["samples_per_second"] / latest_run["batch_size"], 1)
                        if latest and latest_run.get("batch_size") else None)
    data.update(window=window.as_dict(), versions=published(window.start, window.data_end))
    return render(request, "learner/learner.html", {
        "form": form, "picker": form.picker(request.GET), "window": window, "curves": data,
        "run": latest_run, "latest": latest, "steps_per_second": steps_per_second,
        "restarts": sum(len(run["restarts"]) for run in data["runs"]), "definitions": DEFINITIONS,
        "has_runs": latest_run is not None or TrainingRun.objects.exists(),
    }, status=400 if form.errors else 200)


@permission_required("learner.view_policyversion", raise_exception=True)
def versions(request):
    rows = PolicyVersion.objects.select_related("parent")[:200]
    return render(request, "learner/versions.html", {"versions": rows})
