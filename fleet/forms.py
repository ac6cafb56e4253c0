from __future__ import annotations

from datetime import datetime

from django import forms

from fleet.models import Episode, Robot, Task


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, strip=True)


class RobotTasksForm(forms.Form):
    tasks = forms.ModelMultipleChoiceField(Task.objects.filter(enabled=True), to_field_name="env_name")


class RobotForm(RobotTasksForm):
    name = forms.RegexField(regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", max_length=64,
                            error_messages={"invalid": "use letters, digits, '-', '_' or '.' (at most 64)"})


class EpisodeFilterForm(forms.Form):
    task = forms.ModelChoiceField(Task.objects.all(), required=False, to_field_name="env_name")
    robot = forms.ModelChoiceField(Robot.objects.all(), required=False, to_field_name="name")
    outcome = forms.ChoiceField(choices=[("", "any")] + Episode.Outcome.choices, required=False)
    source = forms.ChoiceField(choices=[("", "any")] + Episode.Source.choices, required=False)
    after = forms.CharField(required=False, widget=forms.HiddenInput,
                            help_text="Keyset cursor: <finished_at ISO>|<id> of the last row shown.")

    def clean_after(self):
        value = self.cleaned_data["after"]
        if not value:
            return None
        stamp, _, pk = value.rpartition("|")
        try:
            return datetime.fromisoformat(stamp), int(pk)
        except ValueError:
            raise forms.ValidationError("the page cursor is malformed; start again from the first page") from None


class AuditFilterForm(forms.Form):
    verb = forms.CharField(max_length=64, required=False, help_text="e.g. version. for every version decision")
    object_type = forms.CharField(max_length=64, required=False, help_text="e.g. learner.policyversion")
    actor = forms.CharField(max_length=150, required=False, help_text='a username, or "system"')
    target = forms.CharField(max_length=200, required=False, label="Object", help_text="e.g. v12 or sim-1")
    text = forms.CharField(max_length=200, required=False, label="Reason contains")
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("'since' is after 'until'")
        return data
