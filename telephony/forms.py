from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from telephony import decks
from telephony.models import ADMIN_ONLY_CLASSES, Carrier, DeckMapping, DestinationClass


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
    read_as = forms.ChoiceField(
        label=_("Read it as"),
        required=False,
        help_text=_("You see the first rows and can change every column before the import."),
    )
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
        saved = [
            (f"saved:{m.pk}", f"{m.carrier}: {m.name}")
            for m in DeckMapping.objects.select_related("carrier")
        ]
        self.fields["read_as"].choices = [  # type: ignore[attr-defined]
            ("", _("Detect from the file (or the carrier's saved mapping)")),
            *([(_("Saved mappings"), saved)] if saved else []),
            (_("Layouts"), [(f"preset:{k}", p.label) for k, p in decks.PRESETS.items()]),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start = data.get("read_as") or ""
        carrier = data.get("carrier")
        if (
            start.startswith("saved:")
            and carrier is not None
            and not DeckMapping.objects.filter(pk=int(start[6:]), carrier=carrier).exists()
        ):
            self.add_error("read_as", _("That saved mapping is for another carrier."))
        return data

    def clean_effective_from(self) -> datetime:
        """A time a deck can be in force from: a typo of a year (0001, 9999) was stored and
        then broke every page that reads the deck (PostgreSQL keeps it, Python cannot)."""
        value: datetime = self.cleaned_data["effective_from"]
        first = datetime(2000, 1, 1, tzinfo=timezone.get_current_timezone())
        if not first <= value <= timezone.now() + timedelta(days=366):
            raise forms.ValidationError(_("Choose a time from 2000 to a year from now."))
        return value


class MappingForm(forms.Form):
    """How the preview page reads a deck: the file's layout and a column for each field."""

    delimiter = forms.ChoiceField(label=_("Delimiter"), choices=list(decks.DELIMITERS.items()))
    encoding = forms.ChoiceField(label=_("Encoding"), choices=list(decks.ENCODINGS.items()))
    header = forms.BooleanField(label=_("The first line is a header"), required=False)
    zero_is_per_second = forms.BooleanField(
        label=_("Increment 0 means per second"),
        required=False,
        help_text=_("A2Billing and ASTPP write 0 for billing by the second."),
    )
    date_format = forms.ChoiceField(
        label=_("Dates are written like"), choices=list(decks.DATE_FORMATS.items())
    )
    prepend = forms.RegexField(
        label=_("Digits to put before each prefix"),
        regex=r"^[0-9]{0,6}$",
        required=False,
        help_text=_("For decks that leave out the country code, like 1 for NANP codes."),
    )
    max_prefixes = forms.IntegerField(
        label=_("At most this many prefixes in one field"),
        min_value=1,
        max_value=1000,
        initial=decks.MAX_PREFIXES,
        help_text=_('A field like "61 38,39" is the prefixes 6138 and 6139.'),
    )
    save_as = forms.CharField(
        label=_("Save this mapping for the carrier as"),
        max_length=100,
        required=False,
        help_text=_("It is offered again with the carrier's next deck."),
    )

    def __init__(self, *args: Any, columns: list[tuple[int, str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [
            (str(i), f"{i + 1}: {title}" + (f" ({value[:20]})" if value else ""))
            for i, title, value in columns
        ]
        for key, label in decks.FIELDS.items():
            self.fields[f"column_{key}"] = forms.TypedChoiceField(
                label=label,
                choices=choices,
                coerce=int,
                empty_value=None,
                required=key in decks.REQUIRED,
            )

    @classmethod
    def initial_from(cls, mapping: decks.Mapping, index: dict[str, int]) -> dict[str, Any]:
        data = mapping.to_json()
        data.pop("columns")
        return {**data, **{f"column_{k}": v for k, v in index.items()}}

    def mapping(self) -> decks.Mapping:
        data = self.cleaned_data
        return decks.Mapping.from_json(
            {
                "delimiter": data["delimiter"],
                "encoding": data["encoding"],
                "header": data["header"],
                "zero_is_per_second": data["zero_is_per_second"],
                "date_format": data["date_format"],
                "prepend": data["prepend"] or "",
                "max_prefixes": data["max_prefixes"],
                "columns": {
                    k: data[f"column_{k}"]
                    for k in decks.FIELDS
                    if data.get(f"column_{k}") is not None
                },
            }
        )
