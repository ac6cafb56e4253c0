from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db.models import Count, Exists, Max, Min, OuterRef, Q
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from core import bus, ratelimit
from core.audit import IllegalTransition
from core.http import bad_form_response, retry_later_page
from core.models import AuditEvent
from fleet import control
from fleet.forms import (
    AuditFilterForm,
    BreakdownForm,
    EpisodeFilterForm,
    FlagForm,
    ReasonForm,
    RobotForm,
    RobotTasksForm,
    WindowForm,
)
from fleet.models import Episode, Robot

EPISODES_PER_PAGE = 50


def navigation(request):
    """Context processor: the pages this user's role may open, in menu order."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": []}
    items = [
        ("fleet.view_robot", "Fleet", "fleet"),
        ("fleet.view_episode", "Episodes", "episodes"),
        ("fleet.view_episode", "Breakdown", "breakdown"),
        ("learner.view_policyversion", "Learner", "learner"),
        ("learner.view_policyversion", "Policy versions", "versions"),
        ("governance.view_rollout", "Rollouts", "rollouts"),
        ("governance.view_rollout", "Experiments", "experiments"),
        ("core.view_auditevent", "Audit log", "audit"),
        ("review.label_episode", "Review", "review-queue"),
        ("review.flag_episode", "My flags", "review-flags"),
        ("accounts.manage_users", "Users", "users"),
        ("ops.manage_webhooks", "Webhooks", "webhooks"),
    ]
    nav = [{"label": label, "url": reverse(name), "name": name} for perm, label, name in items if user.has_perm(perm)]
    # Pages of users who may watch the fleet open the live socket (static/js/live.js); others never try. With
    # Redis unreachable, those pages say so in a banner and render from PostgreSQL alone.
    if not user.has_perm("fleet.view_robot"):
        return {"nav_items": nav, "live_socket": ""}
    since = bus.unreachable_since()
    return {"nav_items": nav, "live_socket": "/ws/fleet/", "live_heartbeat_seconds": settings.DASHBOARD_HEARTBEAT_SECONDS,
            "live_unavailable_since": datetime.fromtimestamp(since, tz=dt_timezone.utc) if since else None}


def home(request):
    if request.user.has_perm("fleet.view_robot"):
        return redirect("fleet")
    if request.user.has_perm("review.label_episode"):
        return redirect("review-queue")
    if request.user.has_perm("fleet.view_episode"):
        return redirect("episodes")
    return render(request, "fleet/no_role.html", status=403)


@permission_required("fleet.view_robot", raise_exception=True)
def fleet(request):
    """The operators' landing page: a live tile per robot, fleet KPIs and charts (fleet/dashboard.py) over the
    window the time-range picker chose (an invalid choice: its errors above the default window, status 400)."""
    from fleet.dashboard import DEFINITIONS, fleet_snapshot

    form = WindowForm(request.GET or None)
    now = timezone.now()
    return render(request, "fleet/fleet.html", {
        "snapshot": fleet_snapshot(now, form.chart_window(now)),
        "window_form": form, "picker": form.picker(request.GET), "definitions": DEFINITIONS,
        # A resync refetches the window shown: the query's, or the default one's when the query was refused.
        "snapshot_query": "" if form.errors else request.GET.urlencode(),
        "can_control": request.user.has_perm("fleet.control_robot"),
        "can_enrol": request.user.has_perm("gateway.enrol_robot"),
        "add_form": RobotForm(),
        "robot_commands": list(Robot.COMMANDS.items()),
        "state_labels": dict(Robot.State.choices),
    }, status=400 if form.errors else 200)


@permission_required("fleet.view_robot", raise_exception=True)
def fleet_snapshot_json(request):
    """The fleet page's data for the same window query, refetched by a page whose socket reconnected (it may have
    missed deltas)."""
    from fleet.dashboard import fleet_snapshot

    form = WindowForm(request.GET or None)
    if form.errors:
        return bad_form_response(form)
    now = timezone.now()
    return JsonResponse(fleet_snapshot(now, form.chart_window(now)))


@permission_required("fleet.view_episode", raise_exception=True)
def breakdown(request):
    """Autonomous success per version × robot × task over a window: how one bad robot or one regressed task shows
    up."""
    from fleet.dashboard import DEFINITIONS
    from fleet.dashboard import breakdown as compute

    form = BreakdownForm(request.GET or None)
    context = {"form": form, "picker": form.picker(request.GET), "definitions": DEFINITIONS}
    if form.errors:
        return render(request, "fleet/breakdown.html", context, status=400)
    start, end = form.range(timezone.now())
    data = form.cleaned_data if form.is_bound else {}
    return render(request, "fleet/breakdown.html", {
        **context, "table": compute(start, end, data.get("source") or Episode.Source.ONLINE,
                                    numbers=data.get("versions")),
        "start": start, "end": end,
    })


def _wants_json(request) -> bool:
    """The tile's script asks for JSON (the robot's new state); a plain form post gets a page back."""
    return "application/json" in request.headers.get("Accept", "")


def _after_command(request, robot: Robot):
    """Where a plain form post returns: the page it came from (the robot's page or the fleet), else the fleet."""
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                                require_https=request.is_secure()):
        return redirect(back)
    return redirect("fleet")


@require_POST
@permission_required("fleet.control_robot", raise_exception=True)
def robot_command(request, pk: int, command: str):
    """An operator's command to one robot, with an optional reason (the audit row's). A command the robot's state
    does not allow is refused with the reason (409 for the tile's script, with the state as it is, so a stale tile
    corrects itself); an accepted one answers with the new state, which every dashboard also hears."""
    if command not in control.COMMANDS:
        return HttpResponseBadRequest(f"unknown robot command {command!r}")
    robot = get_object_or_404(Robot, pk=pk, retired=False)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        if _wants_json(request):
            return JsonResponse({"error": bad_form_response(form).content.decode()}, status=400)
        return bad_form_response(form)
    try:
        control.COMMANDS[command](robot, request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        text = str(exc)[:1].upper() + str(exc)[1:]
        if _wants_json(request):
            return JsonResponse({"error": text, "robot": robot.live_state()}, status=409)
        messages.error(request, text)
    else:
        text = f"{robot.name}: {Robot.COMMANDS[command].lower()} done."
        if _wants_json(request):
            return JsonResponse({"message": text, "robot": robot.live_state()})
        messages.success(request, text)
    return _after_command(request, robot)


@require_POST
@permission_required("fleet.control_robot", raise_exception=True)
def fleet_command(request, command: str):
    """Start or stop every robot in the fleet (those already so are left alone), with one reason for all."""
    if command not in ("start", "stop"):
        return HttpResponseBadRequest(f"unknown fleet command {command!r}")
    form = ReasonForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    reason = form.cleaned_data["reason"] or "whole fleet"
    changed = 0
    for robot in Robot.objects.filter(retired=False, enabled=(command == "stop")):
        try:
            control.COMMANDS[command](robot, request.user, reason=reason)
            changed += 1
        except IllegalTransition:
            pass  # changed by someone else meanwhile
    messages.success(request, f"{command}: {changed} robot(s).")
    return redirect("fleet")


@require_POST
@permission_required("fleet.control_robot", raise_exception=True)
def robot_add(request):
    form = RobotForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
        return redirect("fleet")
    try:
        robot = control.add(form.cleaned_data["name"], list(form.cleaned_data["tasks"]), request.user,
                            reason=form.cleaned_data["reason"])
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Added {robot.name}; start it to run episodes.")
    return redirect("fleet")


@require_POST
@permission_required("fleet.control_robot", raise_exception=True)
def robot_tasks(request, pk: int):
    robot = get_object_or_404(Robot, pk=pk, retired=False)
    form = RobotTasksForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    robot.set_tasks(list(form.cleaned_data["tasks"]), request.user, reason=form.cleaned_data["reason"])
    messages.success(request, f"{robot.name} now runs {', '.join(t.env_name for t in form.cleaned_data['tasks'])}.")
    return _after_command(request, robot)


ROBOT_PAGE_EPISODES = 25  # episodes per page of a robot's page
ROBOT_PAGE_HISTORY = 50  # audit rows shown per table
ROBOT_PAGE_WINDOW = 2000  # the robot's latest episodes its versions and interventions are summed over
STATUS_VERBS = ["robot.add", "robot.start", "robot.stop", "robot.pause", "robot.resume", "robot.takeover",
                "robot.online", "robot.offline", "robot.remove"]


@permission_required("fleet.view_robot", raise_exception=True)
def robot_detail(request, pk: int):
    """One robot: its state and last heartbeat, how its status moved and who moved it (the audit trail), the
    versions it ran, its episodes (paged) and its interventions."""
    robot = get_object_or_404(Robot.objects.select_related("policy_version"), pk=pk)
    form = EpisodeFilterForm({"after": request.GET.get("after", "")})
    if not form.is_valid():
        return bad_form_response(form)
    trail = AuditEvent.objects.filter(object_type=Robot._meta.label_lower, object_id=str(robot.pk))
    page, next_after = _robot_episodes(robot, form.cleaned_data["after"])
    window = robot.episodes.order_by("-finished_at", "-id").values("pk")[:ROBOT_PAGE_WINDOW]
    return render(request, "fleet/robot.html", {
        "robot": robot,
        "live": robot.live_state(),
        "state_labels": dict(Robot.State.choices),
        "can_control": request.user.has_perm("fleet.control_robot") and not robot.retired,
        "can_audit": request.user.has_perm("core.view_auditevent"),
        "tasks": list(robot.tasks.values_list("env_name", flat=True)),
        "status_history": _with_states(list(trail.filter(verb__in=STATUS_VERBS)[:ROBOT_PAGE_HISTORY])),
        "operator_actions": list(trail.filter(actor__isnull=False)[:ROBOT_PAGE_HISTORY]),
        "versions": _versions_run(robot, window),
        "window": ROBOT_PAGE_WINDOW,
        "interventions": list(Episode.objects.filter(pk__in=window, intervention_count__gt=0)
                              .select_related("task").prefetch_related("interventions")
                              .order_by("-finished_at", "-id")[:ROBOT_PAGE_EPISODES]),
        "episodes": page,
        "next_after": next_after,
        "first_page": not request.GET.get("after"),
        "robot_commands": list(Robot.COMMANDS.items()),
    })


def _robot_episodes(robot: Robot, after) -> tuple[list, str | None]:
    """A page of the robot's episodes, newest first, by keyset (the episodes page's cursor)."""
    rows = robot.episodes.select_related("task", "policy_version").order_by("-finished_at", "-id")
    if after:
        stamp, last = after
        rows = rows.filter(Q(finished_at__lt=stamp) | Q(finished_at=stamp, id__lt=last))
    page = list(rows[:ROBOT_PAGE_EPISODES + 1])
    if len(page) <= ROBOT_PAGE_EPISODES:
        return page, None
    page = page[:ROBOT_PAGE_EPISODES]
    return page, f"{page[-1].finished_at.isoformat()}|{page[-1].pk}"


def _versions_run(robot: Robot, window) -> list[dict]:
    """The versions the robot's latest episodes ran, newest first, with their episodes, successes and
    interventions (from episodes: the robot's own record, whatever its assignments said)."""
    rows = (Episode.objects.filter(pk__in=window).values("policy_version__number")
            .annotate(episodes=Count("pk"), successes=Count("pk", filter=Q(outcome=Episode.Outcome.SUCCESS)),
                      helped=Count("pk", filter=Q(intervention_count__gt=0)), evaluations=Count(
                          "pk", filter=Q(source=Episode.Source.EVALUATION)),
                      first=Min("started_at"), last=Max("finished_at"))
            .order_by("-last"))
    return [{**row, "number": row.pop("policy_version__number")} for row in rows]


def _with_states(events: list[AuditEvent]) -> list[AuditEvent]:
    """Each status row with the states it moved between, in words (audit details keep the raw values)."""
    words = dict(Robot.Status.choices)
    for event in events:
        details = event.details or {}
        if event.verb in ("robot.start", "robot.stop"):
            event.change = "started" if event.verb == "robot.start" else "stopped"
            if details.get("status"):
                event.change += f", {words.get(details['status'], details['status'])}"
        elif "to" in details:
            event.change = f"{words.get(details.get('from'), details.get('from'))} → " \
                           f"{words.get(details['to'], details['to'])}"
        else:
            event.change = ""
    return events


@permission_required("fleet.view_episode", raise_exception=True)
def episodes(request):
    form = EpisodeFilterForm(request.GET or None)
    if request.GET and not form.is_valid():
        return render(request, "fleet/episodes.html", {"form": form, "episodes": []}, status=400)
    filters = form.cleaned_data if form.is_bound else {}
    if filters.get("find"):  # search by id or UUID: straight to the episode
        field, value = filters["find"]
        found = Episode.objects.filter(**{field: value}).values_list("pk", flat=True).first()
        if found is None:
            form.add_error("find", f"no episode has the {'id' if field == 'pk' else 'UUID'} {value}")
            return render(request, "fleet/episodes.html", {"form": form, "episodes": []}, status=404)
        return redirect("episode", found)
    rows = Episode.objects.select_related("task", "robot", "policy_version").order_by("-finished_at", "-id")
    for field in ("task", "robot", "outcome", "source"):
        if filters.get(field):
            rows = rows.filter(**{field: filters[field]})
    if filters.get("version"):
        rows = rows.filter(policy_version__number=filters["version"])
    if filters.get("flagged") is not None:
        flagged = Exists(Episode.objects.filter(pk=OuterRef("pk"), flags__isnull=False))  # review's flags
        rows = rows.filter(flagged if filters["flagged"] else ~flagged)
    if filters.get("labelled") is not None:
        rows = rows.filter(label__isnull=not filters["labelled"])
    if filters.get("since"):
        rows = rows.filter(finished_at__gte=filters["since"])
    if filters.get("until"):
        rows = rows.filter(finished_at__lt=filters["until"])
    if filters.get("after"):
        stamp, pk = filters["after"]
        rows = rows.filter(Q(finished_at__lt=stamp) | Q(finished_at=stamp, id__lt=pk))
    page = list(rows[: EPISODES_PER_PAGE + 1])
    next_cursor = None
    if len(page) > EPISODES_PER_PAGE:
        page = page[:EPISODES_PER_PAGE]
        last = page[-1]
        next_query = request.GET.copy()
        next_query["after"] = f"{last.finished_at.isoformat()}|{last.pk}"
        next_cursor = next_query.urlencode()
    return render(request, "fleet/episodes.html", {"form": form, "episodes": page, "next_query": next_cursor})


@permission_required("fleet.view_episode", raise_exception=True)
def episode(request, pk: int):
    """One episode: its summary, intervention segments, flags, label, and its time series for the plots."""
    from fleet.charts import episode_series
    from fleet.ingest import load_arrays

    row = get_object_or_404(Episode.objects.select_related("task", "robot", "policy_version"), pk=pk)
    series = episode_series(row, load_arrays(row))
    flags = list(row.flags.select_related("raised_by", "resolved_by"))
    # One open flag per person and episode (review's constraint): theirs is shown instead of the form.
    mine = next((f for f in flags if f.raised_by_id == request.user.pk and f.status == "open"), None)
    return render(request, "fleet/episode.html", {
        "episode": row, "series": series, "flags": flags, "my_open_flag": mine,
        "segments": series["segments"], "can_flag": request.user.has_perm("review.flag_episode"),
        "flag_form": FlagForm(),
    })


AUDIT_ROWS_SHOWN = 200


@permission_required("core.view_auditevent", raise_exception=True)
def audit(request):
    """Every decision: who, when, why and the figures shown at the time (details); filterable; ?format=csv exports
    every matching row, streamed (it counts against the person's export rate, as dataset exports do)."""
    query = request.GET.copy()
    export = query.pop("format", [""])[-1] == "csv"
    form = AuditFilterForm(query or None)
    events = AuditEvent.objects.all()
    if form.is_bound and not form.is_valid():
        return render(request, "fleet/audit.html", {"form": form, "events": []}, status=400)
    filters = form.cleaned_data if form.is_bound else {}
    if filters.get("verb"):
        events = events.filter(verb__startswith=filters["verb"])
    if filters.get("object_type"):
        events = events.filter(object_type=filters["object_type"])
    if filters.get("actor"):
        events = events.filter(actor_name="" if filters["actor"] == "system" else filters["actor"])
    if filters.get("target"):
        events = events.filter(object_repr__icontains=filters["target"])
    if filters.get("text"):
        events = events.filter(reason__icontains=filters["text"])
    if filters.get("since"):
        events = events.filter(created_at__gte=filters["since"])
    if filters.get("until"):
        events = events.filter(created_at__lte=filters["until"])
    if export:
        try:
            ratelimit.hit("export", request.user.pk, limit=settings.EXPORT_RATE_LIMIT,
                          window=settings.EXPORT_RATE_WINDOW, what="exports")
        except ratelimit.RateLimited as exc:
            return retry_later_page(request, f"you asked for {exc}", exc.retry_after,
                                    link=(reverse("audit"), "The audit log"))
        return _audit_csv(events)
    rows = list(events[:AUDIT_ROWS_SHOWN + 1])
    return render(request, "fleet/audit.html", {
        "form": form, "events": rows[:AUDIT_ROWS_SHOWN], "more": len(rows) > AUDIT_ROWS_SHOWN,
        "csv_query": (query.urlencode() + "&" if query else "") + "format=csv"})


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (a reason typed as =HYPERLINK(...))
    gets a leading apostrophe (OWASP's advice against CSV injection)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _audit_csv(events):
    import csv
    import json

    from django.http import StreamingHttpResponse

    class Echo:
        def write(self, value):
            return value

    writer = csv.writer(Echo())

    def rows():
        yield writer.writerow(["when", "who", "verb", "object_type", "object_id", "object", "reason", "details"])
        for event in events.iterator(chunk_size=1000):
            yield writer.writerow([_cell(value) for value in (
                event.created_at.isoformat(), event.who, event.verb, event.object_type, event.object_id,
                event.object_repr, event.reason, json.dumps(event.details, sort_keys=True))])

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
    return response
