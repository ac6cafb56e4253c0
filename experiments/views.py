from django.contrib.auth.decorators import permission_required
from django.http import FileResponse, Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from experiments import store

# Supervisors and operators read the experiments (annotators do not: they see no rollouts either).
PERMISSION = "governance.view_rollout"

# A report is a file the `experiment` command wrote: Plotly and the figures' data inline. It is served sandboxed
# (a unique origin: no cookies, no access to this site's pages or API), with inline script allowed for itself only.
REPORT_POLICY = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
                 "style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")


@require_GET
@permission_required(PERMISSION, raise_exception=True)
def experiments(request):
    return render(request, "experiments/experiments.html", {"sweeps": store.summaries(), "root": store.root()})


@require_GET
@permission_required(PERMISSION, raise_exception=True)
def experiment_report(request, name: str):
    path = store.report_path(name) if store.NAME.match(name) else None
    if path is None or not path.exists():
        raise Http404("no such report")
    download = request.GET.get("download") == "1"
    response = FileResponse(path.open("rb"), content_type="text/html; charset=utf-8", as_attachment=download,
                            filename=f"experiment-{name}.html")
    response["Content-Security-Policy"] = REPORT_POLICY
    response._csp_exempt = True  # django-csp would replace the policy with the site's
    return response
