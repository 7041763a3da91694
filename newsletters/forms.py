from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from newsletters.models import ImportMode, SendingDomain


class DomainForm(forms.Form):
    name = forms.CharField(
        label=_("Domain"),
        max_length=253,
        help_text=_("The domain of your From address, for example myproject.org."),
    )


class OverrideForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=300,
        help_text=_("Why this member holds the domain: it is kept in the audit log."),
    )


class ListForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    slug = forms.CharField(
        label=_("Public address"),
        max_length=60,
        help_text=_("Lower-case letters, digits and hyphens: the signup page's web address."),
    )
    description = forms.CharField(
        label=_("Description"), widget=forms.Textarea(attrs={"rows": 3}), required=False
    )
    domain = forms.ModelChoiceField(
        label=_("Sending domain"), queryset=SendingDomain.objects.none()
    )
    from_name = forms.CharField(label=_("From name"), max_length=100)
    from_local = forms.CharField(
        label=_("From address"), max_length=64, help_text=_("What comes before the @.")
    )
    signup_open = forms.BooleanField(label=_("Public signup page"), required=False, initial=True)
    archive_public = forms.BooleanField(label=_("Public archive"), required=False)

    def __init__(self, *args: Any, domains: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["domain"].queryset = domains  # type: ignore[attr-defined]


class SignupForm(forms.Form):
    email = forms.CharField(label=_("Email address"), max_length=254)
    name = forms.CharField(label=_("Name (optional)"), max_length=100, required=False)
    # A field people never see; bots that fill in every field give themselves away.
    website = forms.CharField(label=_("Leave this empty"), required=False)


class ImportForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_("UTF-8, first line naming the columns: email and optionally name."),
    )
    consent_source = forms.CharField(
        label=_("Where did these people give their consent?"),
        max_length=300,
        help_text=_("For example: signup sheet at the spring fair, 12 April 2026."),
    )
    mode = forms.ChoiceField(label=_("Confirmation"), choices=ImportMode.choices)


class CampaignForm(forms.Form):
    subject = forms.CharField(label=_("Subject"), max_length=200)
    text_body = forms.CharField(
        label=_("Plain text"),
        widget=forms.Textarea(attrs={"rows": 12}),
        help_text=_(
            "Merge fields: {{ name }}, {{ email }}, {{ unsubscribe_url }}, {{ list_name }}, "
            "{{ archive_url }}."
        ),
    )
    html_body = forms.CharField(
        label=_("HTML (optional)"), widget=forms.Textarea(attrs={"rows": 12}), required=False
    )


class ScheduleForm(forms.Form):
    at = forms.DateTimeField(
        label=_("Send at"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )


class TestSendForm(forms.Form):
    to = forms.EmailField(label=_("Send a test copy to"))
