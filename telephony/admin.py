from __future__ import annotations

from django.contrib import admin

from panel.admin_site import ReadOnlyAdmin
from telephony.models import (
    AccessNumber,
    CallPlan,
    CallRecord,
    Carrier,
    DeckMapping,
    PinLock,
    RateDeck,
    Trunk,
)


@admin.register(AccessNumber)
class AccessNumberAdmin(admin.ModelAdmin):
    list_display = ("number", "city", "country", "context")


@admin.register(Carrier)
class CarrierAdmin(admin.ModelAdmin):
    list_display = ("name", "supplier")


@admin.register(Trunk)
class TrunkAdmin(admin.ModelAdmin):
    list_display = ("name", "carrier", "dial_template", "priority", "active")


@admin.register(CallPlan)
class CallPlanAdmin(admin.ModelAdmin):
    list_display = ("member", "account_number", "max_concurrent", "per_call_cap")
    exclude = ("pin_hash",)


@admin.register(RateDeck)
class RateDeckAdmin(ReadOnlyAdmin):
    list_display = ("carrier", "version", "effective_from", "state", "rows_done", "source_name")
    exclude = ("content",)


@admin.register(DeckMapping)
class DeckMappingAdmin(admin.ModelAdmin):
    """Saved mappings are renamed or deleted here; they are made on the deck preview page,
    where what they read is shown (the JSON is not edited by hand)."""

    list_display = ("carrier", "name", "updated_by", "updated_at")
    readonly_fields = ("carrier", "mapping", "updated_by", "updated_at")


@admin.register(CallRecord)
class CallRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "member",
        "caller",
        "destination",
        "state",
        "billed_seconds",
        "cost",
        "node",
        "settled_by",
    )
    list_filter = ("state", "settled_by", "is_check", "node")
    search_fields = ("uniqueid", "caller", "destination")


@admin.register(PinLock)
class PinLockAdmin(admin.ModelAdmin):
    """Admins unlock a caller here (delete the row); the deletion is audited like any change."""

    list_display = ("key", "member", "failures", "locked_until", "blocked", "last_failure_at")
    list_filter = ("blocked",)
    search_fields = ("key", "member__email")
    readonly_fields = ("key", "member", "failures", "last_failure_at", "notify")
