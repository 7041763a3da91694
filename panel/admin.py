"""Django admin for the commune core.

Admin changes are audited like member changes, and membership decisions go through the same
services as the panel's pages, so that the rules hold whichever door an admin uses.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from panel import services
from panel.admin_site import AuditedModelAdmin, ReadOnlyAdmin
from panel.models import (
    Account,
    Application,
    AuditEntry,
    BankImport,
    BillingPeriod,
    CostRate,
    CreditHold,
    Heartbeat,
    Leg,
    MemberBalance,
    Membership,
    MembershipEvent,
    Payment,
    Share,
    StatementLine,
    Statutes,
    Supplier,
    SupplierInvoice,
    Transaction,
    UsageEvent,
    User,
)
from panel.selectors.ledger import overlapping_cost_rates
from panel.services import ledger


@admin.register(User)
class UserAdmin(AuditedModelAdmin, DjangoUserAdmin):
    ordering = ("email",)
    list_display = ("email", "first_name", "last_name", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "first_name", "last_name")
    fieldsets = (
        (None, {"fields": ("email", "password", "language")}),
        ("Personal", {"fields": ("first_name", "last_name")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def audit_owner(self, obj: Any) -> User | None:
        return obj if isinstance(obj, User) else None


class StatutesForm(forms.ModelForm):
    class Meta:
        model = Statutes
        fields = ("title", "text")


@admin.register(Statutes)
class StatutesAdmin(admin.ModelAdmin):
    """New versions only: applicants agreed to the exact text of an earlier version."""

    audit_in_services = True  # statutes_publish writes the audit row

    form = StatutesForm
    list_display = ("version", "title", "published_at", "published_by")
    readonly_fields = ("version", "published_at", "published_by")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        published = services.statutes_publish(
            actor=request.user,  # type: ignore[arg-type]
            title=form.cleaned_data["title"],
            text=form.cleaned_data["text"],
        )
        obj.pk = published.pk


class ReasonActionForm(helpers.ActionForm):
    reason = forms.CharField(required=False, label="Reason", max_length=2000)


class MembershipEventInline(admin.TabularInline):
    model = MembershipEvent
    extra = 0
    can_delete = False
    readonly_fields = ("at", "from_status", "to_status", "actor", "reason")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    audit_in_services = True  # the actions call the membership services, which audit
    list_display = ("name", "user", "status", "status_since")
    list_filter = ("status",)
    search_fields = ("name", "user__email")
    readonly_fields = ("user", "status", "name", "status_since", "created_at")
    inlines = (MembershipEventInline,)
    action_form = ReasonActionForm
    actions = ("suspend", "reinstate", "end_membership")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _run(self, request: HttpRequest, queryset: QuerySet[Membership], action: Any) -> None:
        reason = request.POST.get("reason", "")
        for membership in queryset.select_related("user"):
            try:
                action(user=membership.user, actor=request.user, reason=reason)
            except services.MembershipError as exc:
                self.message_user(request, f"{membership.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{membership.name}: done", messages.SUCCESS)

    @admin.action(description="Suspend selected memberships (reason required)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._run(request, queryset, services.membership_suspend)

    @admin.action(description="Reinstate selected suspended memberships")
    def reinstate(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._run(request, queryset, services.membership_reinstate)

    @admin.action(description="End selected memberships (cancels the share)")
    def end_membership(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._run(request, queryset, services.membership_leave)


@admin.register(Application)
class ApplicationAdmin(ReadOnlyAdmin):
    """Decisions are taken in the panel's queue (Applications), which uses the services."""

    list_display = ("name", "user", "state", "submitted_at", "decided_by", "decided_at")
    list_filter = ("state",)
    search_fields = ("name", "user__email")


@admin.register(Share)
class ShareAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "issued_at", "cancelled_at")


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_label", "action", "object_repr", "owner")
    list_filter = ("action", "actor_is_admin")
    search_fields = ("actor_label", "object_repr", "action")
    date_hierarchy = "at"


@admin.register(Heartbeat)
class HeartbeatAdmin(ReadOnlyAdmin):
    list_display = ("name", "at")


# The books ------------------------------------------------------------------------------------


class CostRateForm(forms.ModelForm):
    class Meta:
        model = CostRate
        fields = (
            "service",
            "kind",
            "unit",
            "unit_cost",
            "supplier",
            "reference",
            "valid_from",
            "valid_to",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("valid_from"), data.get("valid_to")
        if start and data.get("service") and data.get("kind"):
            # Refused here with a message; the database's exclusion constraint is the backstop.
            overlapping = overlapping_cost_rates(
                service=data["service"], kind=data["kind"], start=start, end=end
            )
            if overlapping.exists():
                self.add_error(
                    "valid_from", "Another rate of this service and kind covers part of this time."
                )
        return data


@admin.register(CostRate)
class CostRateAdmin(admin.ModelAdmin):
    """New rates only (usage keeps pointing at the rate it was rated with); see cost_rate_set."""

    audit_in_services = True
    form = CostRateForm
    list_display = (
        "service",
        "kind",
        "unit_cost",
        "unit",
        "supplier",
        "reference",
        "valid_from",
        "valid_to",
    )
    list_filter = ("service", "kind")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        rate = ledger.cost_rate_set(actor=request.user, **form.cleaned_data)  # type: ignore[arg-type]
        obj.pk = rate.pk


@admin.register(Supplier)
class SupplierAdmin(admin.ModelAdmin):
    list_display = ("name",)
    search_fields = ("name",)


class LegInline(admin.TabularInline):
    model = Leg
    extra = 0
    can_delete = False
    readonly_fields = ("account", "debit", "credit", "memo")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    audit_in_services = True
    list_display = ("posted_at", "kind", "source_key", "period", "description", "actor")
    list_filter = ("kind", "period")
    search_fields = ("source_key", "description")
    inlines = (LegInline,)
    action_form = ReasonActionForm
    actions = ("reverse",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions need the change permission; the fields stay read-only (no form is offered).
        return obj is None and super(ReadOnlyAdmin, self).has_change_permission(request, obj)

    @admin.action(description="Reverse selected transactions (reason required)")
    def reverse(self, request: HttpRequest, queryset: QuerySet[Transaction]) -> None:
        reason = request.POST.get("reason", "")
        for txn in queryset:
            try:
                ledger.transaction_reverse(txn=txn, actor=request.user, reason=reason)  # type: ignore[arg-type]
            except ledger.LedgerError as exc:
                self.message_user(request, f"{txn}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{txn}: reversed", messages.SUCCESS)


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ("code", "name", "type", "purpose")
    list_filter = ("type", "purpose")
    search_fields = ("code", "name")


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "state", "result", "members", "per_head", "closed_at")


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "member", "service", "kind", "quantity", "unit", "amount")
    list_filter = ("service",)
    search_fields = ("source_key", "member__email")
    show_full_result_count = False


for _model in (MemberBalance, CreditHold, Payment, SupplierInvoice, StatementLine, BankImport):
    admin.site.register(_model, ReadOnlyAdmin)
