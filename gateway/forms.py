from __future__ import annotations

from django import forms

from fleet.forms import ReasonForm, RobotForm


class EnrolForm(RobotForm):
    """A remote robot: its name, its tasks, and how long its first token lasts (empty: until revoked)."""

    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650,
                                         help_text="empty: the token lasts until it is revoked")


class TokenForm(ReasonForm):
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650)
