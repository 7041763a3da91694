from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.utils.translation import gettext_lazy as _

from panel.models import ApplicationState

# Control characters (C0, DEL, C1) are invisible, break CSV files and emails that carry the
# text on, and no keyboard types them; a name or reference is one line, a text area may hold
# tabs and line breaks (a browser sends them as \r\n).
single_line = RegexValidator(
    re.compile(r"[\x00-\x1f\x7f-\x9f]"),
    _("Remove the control characters (such as tabs or line breaks) from this field."),
    code="control_characters",
    inverse_match=True,
)
multi_line = RegexValidator(
    re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"),
    _("Remove the control characters from this text."),
    code="control_characters",
    inverse_match=True,
)


class ApplicationForm(forms.Form):
    name = forms.CharField(label=_("Full name"), max_length=200, validators=[single_line])
    statement = forms.CharField(
        label=_("Why do you want to join?"),
        max_length=2000,
        validators=[multi_line],
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text=_("A few sentences for the people who decide; at most 2,000 characters."),
    )
    agree = forms.BooleanField(
        label=_("I have read the statutes above and agree to them."), required=True
    )
    statutes_version = forms.IntegerField(widget=forms.HiddenInput)


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(
        label=_("Decision"),
        choices=[
            (ApplicationState.APPROVED, _("Approve")),
            (ApplicationState.DECLINED, _("Decline")),
        ],
    )
    reason = forms.CharField(
        label=_("Reason (required to decline; sent to the applicant)"),
        required=False,
        max_length=2000,
        validators=[multi_line],
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("decision") == ApplicationState.DECLINED and not data.get("reason", "").strip():
            self.add_error("reason", _("Say why the application is declined."))
        return data


class LeaveForm(forms.Form):
    confirm = forms.BooleanField(
        label=_("I want to leave the co-op and give back my share."), required=True
    )
    reason = forms.CharField(
        label=_("Anything you want us to know (optional)"),
        required=False,
        max_length=2000,
        validators=[multi_line],
        widget=forms.Textarea(attrs={"rows": 3}),
    )
