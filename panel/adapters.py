"""allauth adapter: where the panel's rules meet allauth's flows."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.http import HttpRequest


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # Anyone may sign up; membership is decided afterwards, by people, on an application.
        return bool(getattr(settings, "PANEL_SIGNUP_OPEN", True))
