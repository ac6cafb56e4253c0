"""Rollout pages: the pipeline of versions, each version's comparison with the deployed one, and the decision
POSTs (supervisors only). Every page also gets the rollout mode and the active alerts (rollout_context)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from core.audit import IllegalTransition
from core.http import bad_form_response
from core.models import AuditEvent
from governance import decisions, rules
from governance.analysis import canary_analysis, comparison
from governance.forms import AcknowledgeForm, CanaryForm, DecisionForm
from governance.models import Alert, Rollout
from learner.models import PolicyVersion, TrainingMetric

State = PolicyVersion.State
MAX_CURVE_POINTS = 400
# URL word -> (decision, the PolicyVersion transition it performs)
DECISIONS = {
    "nominate": (decisions.nominate, "nominate"),
    "approve-canary": (decisions.approve_canary, "approve_canary"),
    "promote": (decisions.promote, "promote"),
    "reject": (decisions.reject, "reject"),
    "roll-back": (decisions.roll_back, "roll_back"),
}


def rollout_context(request):
    """Context processor: the rollout mode (shown on every page) and the alerts every dashboard must show."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    alerts = []
    if user.has_perm("fleet.view_robot") or user.has_perm("governance.view_rollout"):
        alerts = list(Alert.objects.filter(status=Alert.Status.ACTIVE)[:5])
    return {"rollout_mode": rules.summary(), "active_alerts": alerts,
            "can_acknowledge": user.has_perm("governance.approve_rollout")}


def _decisions_open(version: PolicyVersion) -> list[str]:
    """The decisions the version's state allows; none that would make it runnable once its checkpoint is gone."""
    return [word for word, (_, verb) in DECISIONS.items() if version.state in PolicyVersion.TRANSITIONS[verb][0]
            and not (version.checkpoint_removed_at and PolicyVersion.TRANSITIONS[verb][1] in PolicyVersion.RUNNABLE)]


@permission_required("governance.view_rollout", raise_exception=True)
def rollouts(request):
    canary = decisions.active_canary()
    in_progress = []
    for version in PolicyVersion.objects.filter(state__in=rules.IN_PROGRESS).exclude(state=State.CANARY):
        evaluation = decisions.latest_evaluation(version)
        in_progress.append({"version": version, "evaluation": evaluation,
                            "progress": evaluation.progress() if evaluation else None})
    history = (AuditEvent.objects.filter(object_type="learner.policyversion", verb__in=[
        f"version.{verb}" for verb in PolicyVersion.TRANSITIONS if verb not in ("supersede",)])
        [:25])
    return render(request, "governance/rollouts.html", {
        "deployed": decisions.deployed_version(),
        "canary": canary, "analysis": canary_analysis(canary) if canary else None,
        "in_progress": in_progress,
        "checkpoints": PolicyVersion.objects.filter(state=State.CHECKPOINT, checkpoint_removed_at=None)
                                           .order_by("-number")[:10],
        "history": history,
        "can_decide": request.user.has_perm("governance.approve_rollout"),
    })


def _curves(version: PolicyVersion) -> list[dict]:
    """The training run's curves up to the step this version was published at."""
    run, step = version.config.get("run"), version.config.get("step")
    if not run or not step:
        return []
    metrics = TrainingMetric.objects.filter(run_id=run, step__lte=step).order_by("step")
    ids = list(metrics.values_list("pk", flat=True))
    stride = max(1, len(ids) // MAX_CURVE_POINTS)
    keep = ids[::-1][::stride][::-1]  # evenly thinned, always ending at the version's own step
    return [{"step": m.step, "loss": m.loss,
             "w_on": {task: stats.get("w_on") for task, stats in m.tasks.items()}}
            for m in TrainingMetric.objects.filter(pk__in=keep).order_by("step")]


@permission_required("governance.view_rollout", raise_exception=True)
def version(request, number: int):
    row = get_object_or_404(PolicyVersion.objects.select_related("parent"), number=number)
    evaluation = decisions.latest_evaluation(row)
    canary = (Rollout.objects.filter(version=row, stage=Rollout.Stage.CANARY).prefetch_related("robots")
              .order_by("-created_at").first())
    history = AuditEvent.objects.filter(object_type="learner.policyversion", object_id=str(row.pk)).select_related(
        "actor").order_by("created_at", "id")
    deployed = decisions.deployed_version()
    return render(request, "governance/version.html", {
        "version": row, "evaluation": evaluation, "figures": comparison(evaluation) if evaluation else None,
        "deployed": deployed,
        "canary": canary, "analysis": canary_analysis(canary) if canary and row.state == State.CANARY else None,
        "curves": _curves(row), "history": history,
        "can_decide": request.user.has_perm("governance.approve_rollout"),
        "open_decisions": _decisions_open(row),
        "canary_form": CanaryForm(), "decision_form": DecisionForm(),
    })


@require_POST
@permission_required("governance.approve_rollout", raise_exception=True)
def decide(request, number: int, decision: str):
    if decision not in DECISIONS:
        return HttpResponseBadRequest(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}")
    row = get_object_or_404(PolicyVersion, number=number)
    form = (CanaryForm if decision == "approve-canary" else DecisionForm)(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    function, verb = DECISIONS[decision]
    kwargs = {"reason": form.cleaned_data["reason"]}
    if decision == "approve-canary":
        kwargs["robots"] = list(form.cleaned_data["robots"]) or None
        share = form.cleaned_data.get("share")
        kwargs["share"] = share / 100 if share else None
    try:
        function(row, request.user, **kwargs)
    except IllegalTransition as exc:
        text = str(exc)
        messages.error(request, text[:1].upper() + text[1:])
    else:
        messages.success(request, f"{row} {decisions.WORDS[verb]}.")
    return redirect("rollout-version", number=row.number)


@require_POST
@permission_required("governance.approve_rollout", raise_exception=True)
def acknowledge(request, pk: int):
    alert = get_object_or_404(Alert, pk=pk)
    form = AcknowledgeForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("reason: at most 2000 characters")
    try:
        alert.acknowledge(request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition:
        messages.info(request, "That alert was already acknowledged.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = "rollouts"
    return redirect(target)
