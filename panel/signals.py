"""Account changes made through allauth go into the audit log like every other change."""

from __future__ import annotations

from typing import Any

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.dispatch import receiver
from django.http import HttpRequest

from panel.audit import audit_record
from panel.models import User


def _user_of(request: HttpRequest | None, user: User | None) -> User | None:
    if user is not None:
        return user
    if request is not None and request.user.is_authenticated:
        return request.user
    return None


@receiver(account_signals.user_signed_up)
def _signed_up(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    audit_record(
        actor=user, action="account.signed_up", obj=user, owner=user, after={"email": user.email}
    )


@receiver(account_signals.email_confirmed)
def _email_confirmed(sender: Any, request: HttpRequest, email_address: Any, **kwargs: Any) -> None:
    user = email_address.user
    audit_record(
        actor=_user_of(request, user),
        action="account.email_verified",
        obj=user,
        owner=user,
        after={"email": email_address.email},
    )


@receiver(account_signals.email_changed)
def _email_changed(
    sender: Any,
    request: HttpRequest,
    user: User,
    from_email_address: Any,
    to_email_address: Any,
    **kwargs: Any,
) -> None:
    audit_record(
        actor=_user_of(request, user),
        action="account.email_changed",
        obj=user,
        owner=user,
        before={"email": getattr(from_email_address, "email", None)},
        after={"email": to_email_address.email},
    )


@receiver(account_signals.email_added)
def _email_added(
    sender: Any, request: HttpRequest, user: User, email_address: Any, **kw: Any
) -> None:
    audit_record(
        actor=_user_of(request, user),
        action="account.email_added",
        obj=user,
        owner=user,
        after={"email": email_address.email, "verified": email_address.verified},
    )


@receiver(account_signals.email_removed)
def _email_removed(
    sender: Any, request: HttpRequest, user: User, email_address: Any, **kw: Any
) -> None:
    audit_record(
        actor=_user_of(request, user),
        action="account.email_removed",
        obj=user,
        owner=user,
        before={"email": email_address.email},
    )


def _password_event(action: str) -> Any:
    def handler(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
        # Never the password itself, not even hashed: the fact and the time are enough.
        audit_record(actor=_user_of(request, user), action=action, obj=user, owner=user)

    return handler


_password_changed = _password_event("account.password_changed")
_password_set = _password_event("account.password_set")
_password_reset = _password_event("account.password_reset")
account_signals.password_changed.connect(_password_changed, dispatch_uid="audit-password-changed")
account_signals.password_set.connect(_password_set, dispatch_uid="audit-password-set")
account_signals.password_reset.connect(_password_reset, dispatch_uid="audit-password-reset")


def _authenticator_event(action: str) -> Any:
    def handler(
        sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
    ) -> None:
        audit_record(
            actor=_user_of(request, user),
            action=action,
            obj=user,
            owner=user,
            after={"authenticator": authenticator.type},
        )

    return handler


_mfa_added = _authenticator_event("mfa.added")
_mfa_removed = _authenticator_event("mfa.removed")
_mfa_reset = _authenticator_event("mfa.reset")
mfa_signals.authenticator_added.connect(_mfa_added, dispatch_uid="audit-mfa-added")
mfa_signals.authenticator_removed.connect(_mfa_removed, dispatch_uid="audit-mfa-removed")
mfa_signals.authenticator_reset.connect(_mfa_reset, dispatch_uid="audit-mfa-reset")
