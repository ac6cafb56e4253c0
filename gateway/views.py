"""Operators' pages for remote robots: enrol one (its token is shown once), see its credentials, rotate or revoke
them. The robots themselves use the API (gateway/api.py), never these pages."""
from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from core.audit import IllegalTransition
from core.http import bad_form_response
from fleet import control
from fleet.models import Robot
from gateway import credentials
from gateway.forms import EnrolForm, TokenForm
from gateway.models import RobotToken


def _expiry(days):
    return timezone.now() + timedelta(days=days) if days else None


@permission_required("gateway.enrol_robot", raise_exception=True)
def enrol(request):
    form = EnrolForm(request.POST or None)
    if request.method != "POST":
        return render(request, "gateway/enrol.html", {"form": form})
    if not form.is_valid():
        return render(request, "gateway/enrol.html", {"form": form}, status=400)
    try:
        robot = control.add(form.cleaned_data["name"], list(form.cleaned_data["tasks"]), request.user,
                            kind=Robot.Kind.REMOTE, reason=form.cleaned_data["reason"])
    except ValueError as exc:
        form.add_error("name", str(exc))
        return render(request, "gateway/enrol.html", {"form": form}, status=400)
    _, token = credentials.issue(robot, request.user, expires_at=_expiry(form.cleaned_data["expires_in_days"]),
                                 reason=form.cleaned_data["reason"] or "enrolled")
    return _show_token(request, robot, token)


def _show_token(request, robot: Robot, token: str):
    # The only time the token exists outside the robot: never stored, logged or cached by the browser.
    response = render(request, "gateway/token.html", {"robot": robot, "token": token,
                                                      "api_root": request.build_absolute_uri("/")})
    response["Cache-Control"] = "no-store"
    return response


@permission_required("fleet.view_robot", raise_exception=True)
def credentials_page(request, pk: int):
    """A robot's tokens (created, used, expiry, revoked), rotated or revoked here; its robot page links to it."""
    robot = get_object_or_404(Robot, pk=pk)
    tokens = list(RobotToken.objects.filter(robot=robot).select_related("created_by", "revoked_by"))
    now = timezone.now()
    for token in tokens:
        token.current_state = token.state(now)
    return render(request, "gateway/robot.html", {
        "robot": robot, "tokens": tokens, "token_form": TokenForm(),
        "can_enrol": request.user.has_perm("gateway.enrol_robot") and not robot.in_process and not robot.retired,
    })


@require_POST
@permission_required("gateway.enrol_robot", raise_exception=True)
def rotate(request, pk: int):
    robot = get_object_or_404(Robot, pk=pk, retired=False)
    form = TokenForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        _, token = credentials.rotate(robot, request.user, expires_at=_expiry(form.cleaned_data["expires_in_days"]),
                                      reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        messages.error(request, str(exc))
        return redirect("robot-credentials", pk=pk)
    return _show_token(request, robot, token)


@require_POST
@permission_required("gateway.enrol_robot", raise_exception=True)
def revoke(request, pk: int, key: str):
    token = get_object_or_404(RobotToken, robot_id=pk, key=key)
    form = TokenForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        credentials.revoke(token, request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Token {key} revoked: the robot's next request is refused.")
    return redirect("robot-credentials", pk=pk)
