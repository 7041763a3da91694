from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from provisioning.models import SiteKind


class SiteForm(forms.Form):
    domain = forms.CharField(
        label=_("Domain"),
        max_length=253,
        help_text=_(
            "For example myproject.org. It is served once its DNS points at the co-op's "
            "server or carries the token the next page shows."
        ),
    )
    kind = forms.ChoiceField(label=_("Kind"), choices=SiteKind.choices, initial=SiteKind.STATIC)


class AliasForm(forms.Form):
    domain = forms.CharField(label=_("Another name for this site"), max_length=253)


class KeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100, required=False)
    public_key = forms.CharField(
        label=_("Public key"),
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("The contents of your ~/.ssh/id_ed25519.pub (one line)."),
    )


class DatabaseForm(forms.Form):
    engine = forms.ChoiceField(
        label=_("Database"), choices=[("mariadb", "MariaDB"), ("postgresql", "PostgreSQL")]
    )


class ConfirmNameForm(forms.Form):
    """An admin holds a name for a site without DNS proof; the reason goes to the audit log."""

    reason = forms.CharField(label=_("Why, without proof"), max_length=500)
