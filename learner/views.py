from django.contrib.auth.decorators import permission_required
from django.shortcuts import render

from learner.models import PolicyVersion


@permission_required("learner.view_policyversion", raise_exception=True)
def versions(request):
    rows = PolicyVersion.objects.select_related("parent")[:200]
    return render(request, "learner/versions.html", {"versions": rows})
