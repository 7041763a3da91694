"""The one helper that writes audit rows.

Every service that changes state calls :func:`audit_record` inside its own transaction, so an
audit row exists exactly when the change was committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models

from panel.models import AuditEntry, User


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
