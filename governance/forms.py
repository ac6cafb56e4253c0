from __future__ import annotations

from django import forms

from fleet.models import Robot
from governance.models import RolloutControl


class DecisionForm(forms.Form):
    reason = forms.CharField(max_length=2000, strip=True, widget=forms.Textarea(attrs={"rows": 2}),
                             error_messages={"required": "give a reason: it is kept in the audit log"})


class CanaryForm(DecisionForm):
    robots = forms.ModelMultipleChoiceField(Robot.objects.filter(retired=False), required=False,
                                            to_field_name="name", widget=forms.CheckboxSelectMultiple)
    share = forms.FloatField(required=False, min_value=1, max_value=100, label="or share of robots (%)")

    def clean(self):
        data = super().clean()
        if data.get("robots") and data.get("share"):
            raise forms.ValidationError("choose robots or a share of the fleet, not both")
        return data


class RollBackForm(DecisionForm):
    freeze = forms.BooleanField(required=False, label="and freeze deployments",
                                help_text="so that continuous mode does not deploy the learner's next version")


class ModeForm(DecisionForm):
    mode = forms.ChoiceField(choices=RolloutControl.Mode.choices)


class AcknowledgeForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, strip=True)
