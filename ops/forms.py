from __future__ import annotations

from urllib.parse import urlsplit

from django import forms

from governance.models import Alert
from ops.models import WebhookEndpoint


class WebhookForm(forms.ModelForm):
    """An endpoint: a name, an http(s) URL, the alert kinds it wants; the secret is made here and shown once (or
    given, to match a receiver that has one already)."""

    url = forms.URLField(max_length=2000, assume_scheme="https", label="URL")
    kinds = forms.MultipleChoiceField(choices=Alert.Kind.choices, widget=forms.CheckboxSelectMultiple,
                                      help_text="the alerts sent to this endpoint")
    secret = forms.CharField(required=False, min_length=16, max_length=200, strip=True,
                             widget=forms.PasswordInput(render_value=False),
                             help_text="empty: a new random secret, shown once")

    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "kinds", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:  # the stored URL is never sent back to a page: empty keeps it
            self.fields["url"].required = False
            self.initial["url"] = ""

    def clean_url(self):
        url = self.cleaned_data["url"]
        if not url and self.instance.pk:
            return WebhookEndpoint.objects.get(pk=self.instance.pk).url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise forms.ValidationError("the URL must be http:// or https:// with a host")
        if parts.username or parts.password:
            raise forms.ValidationError("put no credentials in the URL: receivers verify the signature instead")
        return url
