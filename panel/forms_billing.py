from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import formats, timezone
from django.utils.translation import gettext_lazy as _

from panel.forms import single_line
from panel.models import DeficitChoice, Service, Supplier, User
from panel.selectors.ledger import members_for_choice, open_periods
from panel.services.ledger import booking_days


class PaymentForm(forms.Form):
    member = forms.ModelChoiceField(label=_("Member"), queryset=User.objects.none())
    amount = forms.DecimalField(
        label=_("Amount"), min_value=Decimal("0.01"), decimal_places=2, max_digits=12
    )
    received_on = forms.DateField(
        label=_("Received on"), widget=forms.DateInput(attrs={"type": "date"})
    )
    reference = forms.CharField(label=_("Reference"), max_length=200, validators=[single_line])
    # One key per rendered form: a double submit books the payment once.
    nonce = forms.RegexField(regex=r"^[A-Za-z0-9_-]{16,64}$", widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["member"].queryset = members_for_choice()  # type: ignore[attr-defined]
        self.fields["received_on"].initial = timezone.localdate()

    def clean_received_on(self) -> date:
        day: date = self.cleaned_data["received_on"]
        first, last = booking_days()
        if not first <= day <= last:
            raise forms.ValidationError(
                _("Enter a date between %(first)s and %(last)s.")
                % {"first": formats.date_format(first), "last": formats.date_format(last)}
            )
        return day


class BankImportForm(forms.Form):
    statement = forms.FileField(
        label=_("Bank statement (CSV)"),
        help_text=_(
            "Columns: date, amount, reference; optional id, counterparty. "
            "Rows are matched to members by their payment reference (CP000123)."
        ),
    )


class InvoiceForm(forms.Form):
    supplier = forms.ModelChoiceField(
        label=_("Supplier"), queryset=Supplier.objects.order_by("name")
    )
    service = forms.ChoiceField(label=_("Service"), choices=Service.choices)
    period = forms.ModelChoiceField(label=_("Period"), queryset=open_periods())
    reference = forms.CharField(label=_("Invoice number"), max_length=100, validators=[single_line])
    invoice_date = forms.DateField(
        label=_("Invoice date"), widget=forms.DateInput(attrs={"type": "date"})
    )
    amount = forms.DecimalField(
        label=_("Amount"), min_value=Decimal("0.01"), decimal_places=6, max_digits=18
    )
    description = forms.CharField(
        label=_("Description"), max_length=300, required=False, validators=[single_line]
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["period"].queryset = open_periods()  # type: ignore[attr-defined]


class CloseForm(forms.Form):
    deficit_choice = forms.ChoiceField(
        label=_("If the period ends in a deficit"),
        choices=[("", _("(no deficit)")), *DeficitChoice.choices],
        required=False,
    )
    confirm = forms.BooleanField(
        label=_("I checked the preview; post the charges and lock the period.")
    )
