"""What every newsletters service shares: the error type and input checks."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from newsletters import validation
from panel.models import Membership, MembershipStatus, User


class NewsletterError(Exception):
    """An action that cannot be done; the message is for people."""


def _valid(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except validation.InvalidInput as exc:
        raise NewsletterError(str(exc)) from None


def _require_member(member: User) -> None:
    if not Membership.objects.filter(user=member, status=MembershipStatus.MEMBER).exists():
        raise NewsletterError(_("Only members in good standing may send newsletters."))
