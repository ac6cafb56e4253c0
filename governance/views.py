"""Rollout pages: the pipeline of versions, each version's online record against the version it replaced and its
evaluation against the deployed one, the decision POSTs and the rollout mode and freeze (supervisors only). Every
page also gets the rollout mode, the freeze banner and the active alerts (rollout_context)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db import transaction
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from core.audit import IllegalTransition
from core.http import bad_form_response
from core.models import AuditEvent
from governance import decisions, rules
from governance import mode as rollout_mode
from governance.analysis import canary_analysis, comparison, online_comparison, replaced_version
from governance.forms import AcknowledgeForm, CanaryForm, DecisionForm, ModeForm, RollBackForm
from governance.models import Alert, Rollout, RolloutControl
from learner.models import PolicyVersion, TrainingMetric

State = PolicyVersion.State
MAX_CURVE_POINTS = 400
# URL word -> (decision, the PolicyVersion transition it performs: its key in TRANSITIONS, or "redeploy")
DECISIONS = {
    "nominate": (decisions.nominate, "nominate"),
    "approve-canary": (decisions.approve_canary, "approve_canary"),
    "promote": (decisions.promote, "promote"),
    "reject": (decisions.reject, "reject"),
    "roll-back": (decisions.roll_back, "roll_back"),
    "redeploy": (decisions.redeploy, "redeploy"),
}
MODE_WORDS = {"manual": "every rollout is a supervisor's decision",
              "rules": "the nomination and auto-canary rules act; promotion stays a person's decision",
              "continuous": "every published version goes straight to the whole fleet"}
# Decisions that move a version towards the robots: refused while deployments are frozen.
FROZEN_OUT = ("approve-canary", "promote")
AUDITED_VERBS = [f"version.{verb}" for verb in PolicyVersion.TRANSITIONS if verb != "supersede"] + [
    "rollouts.set_mode", "rollouts.freeze", "rollouts.unfreeze"]


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


def _transition(verb: str) -> tuple[set, str]:
    """(states the decision starts from, state it leads to)."""
    if verb == "redeploy":  # the "deploy" transition, offered for a version the fleet ran and left for a newer one
        return {State.SUPERSEDED}, State.DEPLOYED
    return PolicyVersion.TRANSITIONS[verb]


def _decisions_open(version: PolicyVersion) -> list[str]:
    """The decisions the version's state allows; none that would make it runnable once its checkpoint is gone."""
    return [word for word, (_, verb) in DECISIONS.items() if version.state in _transition(verb)[0]
            and not (version.checkpoint_removed_at and _transition(verb)[1] in PolicyVersion.RUNNABLE)]


@permission_required("governance.view_rollout", raise_exception=True)
def rollouts(request):
    canary = decisions.active_canary()
    in_progress = []
    for version in PolicyVersion.objects.filter(state__in=rules.IN_PROGRESS).exclude(state=State.CANARY):
        evaluation = decisions.latest_evaluation(version)
        in_progress.append({"version": version, "evaluation": evaluation,
                            "progress": evaluation.progress() if evaluation else None})
    history = AuditEvent.objects.filter(verb__in=AUDITED_VERBS)[:25]
    control = rollout_mode.fresh()  # this page is where it changes: never a cached copy
    return render(request, "governance/rollouts.html", {
        "control": control, "rollout_mode": rules.summary(control), "mode_words": MODE_WORDS,
        "modes": RolloutControl.Mode.choices,
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
    replaced = replaced_version(row)
    online = online_comparison(row, replaced)
    control = rollout_mode.fresh()  # the decisions below depend on it: never a cached copy
    open_decisions = _decisions_open(row)
    return render(request, "governance/version.html", {
        "version": row, "evaluation": evaluation, "figures": comparison(evaluation) if evaluation else None,
        "deployed": deployed, "replaced": replaced, "online": online, "spans": _spans(online),
        "rolled_out": replaced is not None or row.rollouts.exists(),
        "rollout_mode": rules.summary(control),
        "frozen_refused": [word for word in open_decisions if word in FROZEN_OUT] if control.frozen else [],
        "canary": canary, "analysis": canary_analysis(canary) if canary and row.state == State.CANARY else None,
        "curves": _curves(row), "history": history,
        "can_decide": request.user.has_perm("governance.approve_rollout"),
        "open_decisions": open_decisions,
        "canary_form": CanaryForm(), "decision_form": DecisionForm(),
    })


def _spans(online: dict) -> dict:
    """The comparison's time spans as datetimes, for the page to format."""
    return {side: span and {**span, "first": parse_datetime(span["first"]), "last": parse_datetime(span["last"])}
            for side, span in online["span"].items()}


@require_POST
@permission_required("governance.approve_rollout", raise_exception=True)
def decide(request, number: int, decision: str):
    if decision not in DECISIONS:
        return HttpResponseBadRequest(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}")
    row = get_object_or_404(PolicyVersion, number=number)
    form_class = {"approve-canary": CanaryForm, "roll-back": RollBackForm, "redeploy": RollBackForm}
    form = form_class.get(decision, DecisionForm)(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    function, verb = DECISIONS[decision]
    kwargs = {"reason": form.cleaned_data["reason"]}
    if decision == "approve-canary":
        kwargs["robots"] = list(form.cleaned_data["robots"]) or None
        share = form.cleaned_data.get("share")
        kwargs["share"] = share / 100 if share else None
    and_freeze = form.cleaned_data.get("freeze", False)
    try:
        with transaction.atomic():  # a roll back with "and freeze" is both or neither
            if and_freeze:
                rollout_mode.freeze(request.user, reason=f"with the {decision.replace('-', ' ')} of {row}: "
                                                         f"{kwargs['reason']}", if_not_frozen=True)
            function(row, request.user, **kwargs)
    except IllegalTransition as exc:
        _refused(request, exc)
    else:
        done = f"{row} {decisions.WORDS[verb]}"
        messages.success(request, done + (" and deployments frozen." if and_freeze else "."))
    return redirect("rollout-version", number=row.number)


def _refused(request, exc: Exception) -> None:
    text = str(exc)
    messages.error(request, text[:1].upper() + text[1:])


@require_POST
@permission_required("governance.approve_rollout", raise_exception=True)
def change_mode(request):
    form = ModeForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        state = rollout_mode.set_mode(form.cleaned_data["mode"], request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Rollout mode set to {state.mode}: {MODE_WORDS[state.mode]}.")
    return redirect("rollouts")


@require_POST
@permission_required("governance.approve_rollout", raise_exception=True)
def freeze_deployments(request, action: str):
    change = {"freeze": rollout_mode.freeze, "unfreeze": rollout_mode.unfreeze}[action]
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        change(request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        _refused(request, exc)
    else:
        messages.success(request, "Deployments frozen: nothing deploys, promotes or starts a canary or an evaluation "
                                  "until they are unfrozen; roll backs stay possible." if action == "freeze" else
                         "Deployments unfrozen.")
    return redirect("rollouts")


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
