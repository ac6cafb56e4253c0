from __future__ import annotations

from django import forms
from django.core.validators import MaxValueValidator

from fleet.models import Robot, Task
from review.models import EpisodeLabel, FailureMode
from review.queue import ORDERS, QueueFilter


class QueueFilterForm(forms.Form):
    task = forms.ModelChoiceField(Task.objects.all(), required=False, to_field_name="env_name", empty_label="any")
    robot = forms.ModelChoiceField(Robot.objects.all(), required=False, to_field_name="name", empty_label="any")
    version = forms.IntegerField(required=False, min_value=1, label="Policy version",
                                 widget=forms.NumberInput(attrs={"placeholder": "any", "size": 5}))
    flag_reason = forms.CharField(required=False, max_length=200, label="Flag reason contains")
    status = forms.ChoiceField(required=False, initial="unlabelled", choices=[
        ("unlabelled", "unlabelled"), ("labelled", "labelled"), ("all", "all")])
    order = forms.ChoiceField(required=False, initial="version",
                              choices=[(key, title) for key, (title, _) in ORDERS.items()])

    def to_filter(self) -> QueueFilter:
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return QueueFilter(
            task=data["task"].pk if data.get("task") else None,
            robot=data["robot"].pk if data.get("robot") else None,
            version=data.get("version") or None,
            flag_reason=data.get("flag_reason") or "",
            status=data.get("status") or "unlabelled",
            order=data.get("order") or "version",
        )


class LabelForm(forms.Form):
    failure_mode = forms.ChoiceField(widget=forms.RadioSelect)
    failure_step = forms.IntegerField(required=False, min_value=0,
                                      help_text="The step where the failure began (F sets it from the cursor).")
    notes = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3}))
    disposition = forms.ChoiceField(choices=EpisodeLabel.Disposition.choices, initial=EpisodeLabel.Disposition.KEEP,
                                    widget=forms.RadioSelect)

    def __init__(self, *args, episode, **kwargs):
        super().__init__(*args, **kwargs)
        self.episode = episode
        self.modes = FailureMode.for_task(episode.task)
        self.fields["failure_mode"].choices = [(m.code, m.name) for m in self.modes]
        last = episode.steps - 1
        step = self.fields["failure_step"]
        step.max_value, step.widget.attrs["max"] = last, last
        step.validators.append(MaxValueValidator(
            last, message=f"the episode has {episode.steps} steps: the failure step is at most {last}"))

    def clean(self):
        data = super().clean()
        if data.get("disposition") == EpisodeLabel.Disposition.RELABEL and data.get("failure_step") is None:
            self.add_error("failure_step", "relabelling needs the step where the failure began")
        return data


class DismissForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, strip=True)


class ExportForm(forms.Form):
    task = forms.ModelChoiceField(Task.objects.all(), required=False, to_field_name="env_name", empty_label="all")
    disposition = forms.MultipleChoiceField(
        choices=EpisodeLabel.Disposition.choices, initial=[EpisodeLabel.Disposition.KEEP,
                                                          EpisodeLabel.Disposition.RELABEL],
        widget=forms.CheckboxSelectMultiple,
        help_text="Excluded episodes are left out unless ticked.")
    format = forms.ChoiceField(choices=[("v3.0", "LeRobot v3.0 (lerobot 0.4 and later)"),
                                        ("v2.1", "LeRobot v2.1 (older tools)")], initial="v3.0", required=False)

    def clean_format(self) -> str:
        return self.cleaned_data["format"] or "v3.0"  # a request that names none gets the current format
