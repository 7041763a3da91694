from __future__ import annotations

from django.contrib import admin

from panel.admin_site import ReadOnlyAdmin
from telephony.models import AccessNumber, CallPlan, CallRecord, Carrier, RateDeck, Trunk


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
    )
    list_filter = ("state",)
    search_fields = ("uniqueid", "caller", "destination")
