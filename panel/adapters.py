"""allauth adapter: where the panel's rules meet allauth's flows."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.translation import gettext as _

# RFC 5321: at most 64 characters before the @ and 254 in all (what a path may carry).
EMAIL_MAX = 254
EMAIL_LOCAL_MAX = 64


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # Anyone may sign up; membership is decided afterwards, by people, on an application.
        return bool(getattr(settings, "PANEL_SIGNUP_OPEN", True))

    def clean_email(self, email: str) -> str:
        """Refuse an address longer than mail allows.

        Django's validator lets longer ones through; allauth then cuts the user's copy to the
        column (a different, broken address) or the database refuses the email row (an error
        page).
        """
        email = super().clean_email(email)
        if len(email) > EMAIL_MAX or len(email.rpartition("@")[0]) > EMAIL_LOCAL_MAX:
            raise ValidationError(
                _(
                    "An email address has at most %(local)d characters before the @ and "
                    "%(all)d in all."
                )
                % {"local": EMAIL_LOCAL_MAX, "all": EMAIL_MAX}
            )
        return email
