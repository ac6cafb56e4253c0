"""Every user's password page, and supervisors' page to deactivate and reactivate users."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import permission_required
from django.contrib.auth.models import Group
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST

from accounts import services
from accounts.sessions import announce_session_end
from core.audit import IllegalTransition
from core.http import bad_form_response

MANAGE = "accounts.manage_users"


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, strip=True)


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, in the site's style. Django keeps this session logged in and ends the user's others (their session
    hash no longer matches); their sockets close at once, and this session's pages reconnect."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("password_change_done")

    def form_valid(self, form):
        response = super().form_valid(form)
        announce_session_end(user=self.request.user.pk)
        return response


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    template_name = "accounts/password_change_done.html"


@permission_required(MANAGE, raise_exception=True)
def users(request):
    people = (get_user_model().objects.order_by("-is_active", "username").select_related("demo_account")
              .prefetch_related(Prefetch("groups", queryset=Group.objects.order_by("name"))))
    return render(request, "accounts/users.html", {"people": people, "form": ReasonForm()})


def _act(request, pk: int, act, done: str):
    person = get_object_or_404(get_user_model(), pk=pk)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        act(person, request.user, reason=form.cleaned_data["reason"])
    except IllegalTransition as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{person.get_username()} {done}.")
    return redirect("users")


@require_POST
@permission_required(MANAGE, raise_exception=True)
def deactivate(request, pk: int):
    return _act(request, pk, services.deactivate, "is deactivated: their sessions ended and they cannot log in")


@require_POST
@permission_required(MANAGE, raise_exception=True)
def reactivate(request, pk: int):
    return _act(request, pk, services.reactivate, "is active again")
