"""The one helper that writes audit rows.

Every service that changes state calls :func:`audit_record` inside its own transaction, so an
audit row exists exactly when the change was committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

from panel.models import AuditEntry, User

# What members read in their activity list; the action code stays in the row for admins.
ACTION_LABELS = {
    "account.signed_up": _("Account created"),
    "account.email_verified": _("Email address verified"),
    "account.email_added": _("Email address added"),
    "account.email_changed": _("Email address changed"),
    "account.email_removed": _("Email address removed"),
    "account.password_changed": _("Password changed"),
    "account.password_set": _("Password set"),
    "account.password_reset": _("Password reset"),
    "account.language": _("Language changed"),
    "mfa.added": _("Two-factor authentication turned on"),
    "mfa.removed": _("Two-factor authentication turned off"),
    "mfa.reset": _("Recovery codes renewed"),
    "application.submitted": _("Application sent"),
    "application.approved": _("Application approved"),
    "application.declined": _("Application declined"),
    "membership.applicant": _("Membership applied for"),
    "membership.member": _("Became a member"),
    "membership.declined": _("Membership declined"),
    "membership.suspended": _("Membership suspended"),
    "membership.left": _("Membership ended"),
    "share.issued": _("Share issued"),
    "share.cancelled": _("Share cancelled"),
    "statutes.published": _("Statutes published"),
    "admin.added": _("Created by an admin"),
    "admin.changed": _("Changed by an admin"),
    "admin.deleted": _("Deleted by an admin"),
}


def action_label(action: str) -> str:
    if action in ACTION_LABELS:
        return str(ACTION_LABELS[action])
    if action.startswith("admin.action."):
        return str(_("Changed by an admin"))
    return action


def snapshot(obj: models.Model | None, fields: Iterable[str]) -> dict[str, Any] | None:
    """The named fields of ``obj`` as plain values (foreign keys by id)."""
    if obj is None:
        return None
    data: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        attname = getattr(field, "attname", name)
        data[name] = getattr(obj, attname)
    return data


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: models.Model,
    owner: User | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    note: str = "",
) -> AuditEntry:
    """Write one audit row; ``actor`` None means the system (a task, a beat job)."""
    if actor is not None and not actor.is_authenticated:
        actor = None
    return AuditEntry.objects.create(
        actor=actor,
        actor_label=actor.email if actor is not None else "system",
        actor_is_admin=bool(actor is not None and actor.is_staff and actor != owner),
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        owner=owner,
        before=before,
        after=after,
        note=note,
    )
