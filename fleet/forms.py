from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from fleet.dashboard import ChartWindow
from fleet.models import Episode, Robot, Task


class ReasonForm(forms.Form):
    """Every operator action may say why: the audit row's reason."""

    reason = forms.CharField(max_length=2000, required=False, strip=True,
                             widget=forms.TextInput(attrs={"placeholder": "reason (optional)"}))


class RobotTasksForm(ReasonForm):
    tasks = forms.ModelMultipleChoiceField(Task.objects.filter(enabled=True), to_field_name="env_name")


class RobotForm(RobotTasksForm):
    name = forms.RegexField(regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", max_length=64,
                            error_messages={"invalid": "use letters, digits, '-', '_' or '.' (at most 64)"})


YES_NO = [("", "any"), ("yes", "yes"), ("no", "no")]


class TimeRangeForm(forms.Form):
    """Optional 'since' / 'until' bounds; an empty range is refused."""

    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("the time range is empty: 'since' must come before 'until'")
        return data


class EpisodeFilterForm(TimeRangeForm):
    find = forms.CharField(required=False, max_length=64, label="Episode id or UUID",
                           widget=forms.TextInput(attrs={"placeholder": "id or UUID", "size": 18}))
    task = forms.ModelChoiceField(Task.objects.all(), required=False, to_field_name="env_name")
    robot = forms.ModelChoiceField(Robot.objects.all(), required=False, to_field_name="name")
    outcome = forms.ChoiceField(choices=[("", "any")] + Episode.Outcome.choices, required=False)
    source = forms.ChoiceField(choices=[("", "any")] + Episode.Source.choices, required=False)
    version = forms.IntegerField(required=False, min_value=1, label="Policy version",
                                 widget=forms.NumberInput(attrs={"placeholder": "number"}))
    flagged = forms.TypedChoiceField(choices=YES_NO, required=False, coerce=lambda v: v == "yes", empty_value=None)
    labelled = forms.TypedChoiceField(choices=YES_NO, required=False, coerce=lambda v: v == "yes", empty_value=None)
    after = forms.CharField(required=False, widget=forms.HiddenInput,
                            help_text="Keyset cursor: <finished_at ISO>|<id> of the last row shown.")

    def clean_find(self):
        """An episode's id (digits) or UUID: returned as ("pk", int) or ("uuid", UUID), None when empty."""
        value = self.cleaned_data["find"].strip()
        if not value:
            return None
        if value.isdigit():
            return "pk", int(value)
        try:
            return "uuid", uuid.UUID(value)
        except ValueError:
            raise forms.ValidationError(f"{value!r} is neither an episode id (a number) nor a UUID") from None

    def clean_after(self):
        value = self.cleaned_data["after"]
        if not value:
            return None
        stamp, _, pk = value.rpartition("|")
        try:
            return datetime.fromisoformat(stamp), int(pk)
        except ValueError:
            raise forms.ValidationError("the page cursor is malformed; start again from the first page") from None


WINDOWS = {"15m": ("last 15 minutes", 15), "1h": ("last hour", 60), "6h": ("last 6 hours", 360),
           "24h": ("last 24 hours", 1440), "7d": ("last 7 days", 10080), "30d": ("last 30 days", 43200)}
PICKER_LABELS = {"15m": "15 min", "1h": "1 h", "6h": "6 h", "24h": "24 h", "7d": "7 d", "30d": "30 d"}


class WindowForm(TimeRangeForm):
    """The time-range picker of the fleet, breakdown and learner pages: a preset ending now, or a from/to range.
    Query parameters `window` (a preset or "custom"), `since`, `until`."""

    presets = ("15m", "1h", "6h", "24h", "7d")
    default = "1h"
    longest = timedelta(days=31)  # a custom range's most; the charts read hour rows beyond two days

    window = forms.ChoiceField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["window"].choices = [(key, WINDOWS[key][0]) for key in self.presets] + [("custom", "range")]
        self.fields["window"].initial = self.default

    def clean(self):
        data = super().clean()
        data["window"] = data.get("window") or self.default
        if data["window"] == "custom":
            if not data.get("since") or not data.get("until"):
                raise forms.ValidationError("a custom range needs both 'since' and 'until'")
            if data["until"] - data["since"] > self.longest:
                raise forms.ValidationError(f"a custom range spans at most {self.longest.days} days: choose a "
                                            "shorter one")
            if data["since"] > timezone.now():
                raise forms.ValidationError("the range starts in the future: nothing has happened there yet")
        return data

    @property
    def chosen(self) -> str:
        """The window shown: this form's when it is valid, else the default (an invalid query shows its errors
        above the default window rather than breaking the page)."""
        return self.cleaned_data["window"] if self.is_bound and self.is_valid() else self.default

    def range(self, now) -> tuple[datetime, datetime]:
        if self.chosen == "custom":
            return self.cleaned_data["since"], self.cleaned_data["until"]
        return now - timedelta(minutes=WINDOWS[self.chosen][1]), now

    def chart_window(self, now) -> ChartWindow:
        start, end = self.range(now)
        return ChartWindow.over(start, end, now, "" if self.chosen == "custom" else WINDOWS[self.chosen][0])

    def picker(self, query) -> list[dict]:
        """The preset links: this page's query with another window, its other parameters kept."""
        links = []
        for key in self.presets:
            params = query.copy()
            for name in ("window", "since", "until"):
                params.pop(name, None)
            params["window"] = key
            links.append({"key": key, "label": PICKER_LABELS[key], "query": params.urlencode(),
                          "current": key == self.chosen})
        return links


VERSION_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)


class BreakdownForm(WindowForm):
    """The window of the version × robot × task breakdown (a preset, or an explicit range), its source and
    versions."""

    presets = ("15m", "1h", "6h", "24h", "7d", "30d")
    default = "24h"
    longest = timedelta(days=366)  # a table of sums: hour rows make a long range cheap

    source = forms.ChoiceField(choices=Episode.Source.choices, required=False, initial=Episode.Source.ONLINE)
    versions = forms.CharField(required=False, max_length=200, label="Versions",
                               widget=forms.TextInput(attrs={"placeholder": "all, or e.g. 12, 15-18 (0: demos)"}))

    def clean_versions(self) -> list[int] | None:
        """Version numbers, as a list and ranges ("12, 15-18"; 0 stands for episodes without a policy, the
        expert's demonstrations); None for all."""
        text = self.cleaned_data.get("versions", "").strip()
        if not text:
            return None
        numbers: set[int] = set()
        for part in (p.strip() for p in text.split(",")):
            match = VERSION_RANGE.fullmatch(part)
            if match is None:
                raise forms.ValidationError(f"{part!r} is not a version number or a range like 15-18")
            low_n, high_n = int(match[1]), int(match[2] or match[1])
            if high_n < low_n or high_n - low_n >= 1000:
                raise forms.ValidationError(f"{part!r}: a range runs from a lower to a higher number, at most 1000")
            numbers.update(range(low_n, high_n + 1))
        return sorted(numbers)

    def clean(self):
        data = super().clean()
        data["source"] = data.get("source") or Episode.Source.ONLINE
        return data


class FlagForm(forms.Form):
    reason = forms.CharField(max_length=2000, strip=True, widget=forms.TextInput(attrs={"size": 50}),
                             error_messages={"required": "a flag needs a reason: say what to look at"})


class AuditFilterForm(TimeRangeForm):
    verb = forms.CharField(max_length=64, required=False, help_text="e.g. version. for every version decision")
    object_type = forms.CharField(max_length=64, required=False, help_text="e.g. learner.policyversion")
    actor = forms.CharField(max_length=150, required=False, help_text='a username, or "system"')
    target = forms.CharField(max_length=200, required=False, label="Object", help_text="e.g. v12 or sim-1")
    text = forms.CharField(max_length=200, required=False, label="Reason contains")
    field_order = ["verb", "object_type", "actor", "target", "text", "since", "until"]
