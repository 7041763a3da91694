"""The admin site of the panel: every registered model admin is audited.

Wrapping at registration covers the admins that other apps register (allauth's email
addresses and authenticators, auth's groups) as well as ours, so that no admin change escapes
the audit log because someone forgot a mixin.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from panel.audit import audit_record, snapshot
from panel.models import User

SECRET_FIELDS = {"password"}


def _audit_fields(model: type[models.Model]) -> list[str]:
    return [
        f.name
        for f in model._meta.concrete_fields
        if f.name not in SECRET_FIELDS and not f.primary_key
    ]


class AuditedModelAdmin(admin.ModelAdmin):
    """Writes an audit row for every add, change and delete made in the admin."""

    # Admins whose changes go through services that audit set this, to avoid double rows.
    audit_in_services = False

    def audit_owner(self, obj: Any) -> User | None:
        owner = getattr(obj, "user", None)
        return owner if isinstance(owner, User) else None

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        fields = _audit_fields(type(obj))
        with transaction.atomic():
            before = snapshot(type(obj)._default_manager.get(pk=obj.pk), fields) if change else None
            super().save_model(request, obj, form, change)
            after = snapshot(obj, fields)
            if SECRET_FIELDS & set(form.changed_data):
                after = {**(after or {}), "password": "(changed)"}
            audit_record(
                actor=request.user,  # type: ignore[arg-type]
                action=f"admin.{'changed' if change else 'added'}",
                obj=obj,
                owner=self.audit_owner(obj),
                before=before,
                after=after,
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record(
                actor=request.user,  # type: ignore[arg-type]
                action="admin.deleted",
                obj=obj,
                owner=self.audit_owner(obj),
                before=snapshot(obj, _audit_fields(type(obj))),
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """Bulk actions change rows without save_model; audit each row they changed."""
        actions = super().get_actions(request)
        if self.audit_in_services or not actions:
            return actions
        audited: dict[str, Any] = {}
        for name, entry in actions.items():
            func, label, description = cast(tuple[Any, str, str], entry)
            if name != "delete_selected":  # delete_queryset audits each row already
                func = self._audited_action(func, name)
            audited[name] = (func, label, description)
        return audited

    def _audited_action(self, func: Any, name: str) -> Any:
        def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
            model = queryset.model
            fields = _audit_fields(model)
            with transaction.atomic():
                before = {obj.pk: (obj, snapshot(obj, fields)) for obj in queryset}
                result = func(modeladmin, request, queryset)
                after = {obj.pk: obj for obj in model._default_manager.filter(pk__in=before)}
                for pk, (old, old_data) in before.items():
                    new = after.get(pk)
                    new_data = snapshot(new, fields)
                    if new_data != old_data:
                        audit_record(
                            actor=request.user,  # type: ignore[arg-type]
                            action=f"admin.action.{name}",
                            obj=new or old,
                            owner=self.audit_owner(new or old),
                            before=old_data,
                            after=new_data,
                        )
            return result

        return run


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that only code writes (ledger, jobs, calls): to look at, not to edit."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PanelAdminSite(admin.AdminSite):
    site_header = "Commune panel administration"
    site_title = "Commune panel"

    def register(self, model_or_iterable: Any, admin_class: Any = None, **options: Any) -> None:
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, AuditedModelAdmin) and not getattr(
            admin_class, "audit_in_services", False
        ):
            admin_class = type(
                f"Audited{admin_class.__name__}",
                (AuditedModelAdmin, admin_class),
                {"__module__": admin_class.__module__},
            )
        super().register(model_or_iterable, admin_class, **options)
