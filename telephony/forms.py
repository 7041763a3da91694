from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from telephony.models import ADMIN_ONLY_CLASSES, Carrier, DestinationClass
from telephony.services import PRESETS


class PhoneForm(forms.Form):
    number = forms.CharField(
        label=_("Phone number"),
        max_length=30,
        help_text=_("With country code, like +49 30 1234567."),
    )


class PinForm(forms.Form):
    pin = forms.RegexField(
        label=_("New PIN"),
        regex=r"^[0-9]{4,8}$",
        widget=forms.PasswordInput,
        help_text=_("4 to 8 digits."),
    )


class PlanForm(forms.Form):
    per_call_cap = forms.DecimalField(
        label=_("Most a single call may cost"),
        min_value=Decimal("0.01"),
        max_value=Decimal("100"),
        decimal_places=2,
    )
    allowed_classes = forms.MultipleChoiceField(
        label=_("Numbers I may call"),
        widget=forms.CheckboxSelectMultiple,
        choices=[(c.value, c.label) for c in DestinationClass if c not in ADMIN_ONLY_CLASSES],
        required=False,
    )


class QuoteForm(forms.Form):
    number = forms.CharField(label=_("What does a call to this number cost?"), max_length=30)


class DeckForm(forms.Form):
    carrier = forms.ModelChoiceField(label=_("Carrier"), queryset=Carrier.objects.order_by("name"))
    file = forms.FileField(label=_("Rate deck (CSV)"))
    preset = forms.ChoiceField(label=_("Column layout"), choices=[(k, k) for k in PRESETS])
    effective_from = forms.DateTimeField(
        label=_("In force from"),
        initial=timezone.now,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Said before the upload, rather than after a 413 (nginx has the same limit).
        self.fields["file"].help_text = _("At most %(mb)d MB.") % {
            "mb": settings.PANEL_UPLOAD_MAX_MB
        }

    def clean_effective_from(self) -> datetime:
        """A time a deck can be in force from: a typo of a year (0001, 9999) was stored and
        then broke every page that reads the deck (PostgreSQL keeps it, Python cannot)."""
        value: datetime = self.cleaned_data["effective_from"]
        first = datetime(2000, 1, 1, tzinfo=timezone.get_current_timezone())
        if not first <= value <= timezone.now() + timedelta(days=366):
            raise forms.ValidationError(_("Choose a time from 2000 to a year from now."))
        return value
