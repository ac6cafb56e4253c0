from django.contrib.auth.decorators import permission_required
from django.db.models import F, Window
from django.db.models.functions import Mod, RowNumber
from django.shortcuts import render

from learner.models import PolicyVersion, TrainingRun

MAX_POINTS = 600  # curve points sent with the page; the socket extends them live


@permission_required("learner.view_policyversion", raise_exception=True)
def learner(request):
    run = TrainingRun.objects.select_related("base_version").first()
    points = []
    if run is not None:
        stride = max(1, -(-run.metrics.count() // MAX_POINTS))  # ceil: at most MAX_POINTS points
        # An evenly thinned history, always ending at the latest point, thinned by the database: every stride-th
        # point counted back from the newest.
        ranked = run.metrics.annotate(rank=Window(RowNumber(), order_by=F("step").desc()))
        points = [m.point() for m in ranked.annotate(slot=Mod(F("rank") - 1, stride)).filter(slot=0)
                  .order_by("step")]
    versions = [{"number": v.number, "state": v.state, "algorithm": v.algorithm, "at": v.created_at.isoformat(),
                 "train_steps": v.train_steps}
                for v in PolicyVersion.objects.order_by("-number")[:200]][::-1]
    return render(request, "learner/learner.html", {"run": run, "points": points, "versions": versions,
                                                    "latest": points[-1] if points else None})


@permission_required("learner.view_policyversion", raise_exception=True)
def versions(request):
    rows = PolicyVersion.objects.select_related("parent")[:200]
    return render(request, "learner/versions.html", {"versions": rows})
