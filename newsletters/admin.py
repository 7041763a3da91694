"""Admin for newsletters: members' rate limits to edit; everything else to look at.

Campaign and subscriber changes go through the member's pages (with their audit and consent
rows); the admin shows what happened. The DKIM private keys are never shown.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from newsletters.models import (
    BounceEvent,
    Campaign,
    ConsentEvent,
    Delivery,
    InboundReport,
    MailingList,
    SenderLimit,
    SendingDomain,
    Subscriber,
    SubscriberImport,
)
from panel.admin_site import ReadOnlyAdmin
from panel.models import User


@admin.register(SenderLimit)
class SenderLimitAdmin(admin.ModelAdmin):
    list_display = ("member", "per_minute", "window_start", "window_used")
    fields = ("member", "per_minute")
    raw_id_fields = ("member",)

    def audit_owner(self, obj: Any) -> User | None:
        return obj.member


@admin.register(SendingDomain)
class SendingDomainAdmin(ReadOnlyAdmin):
    list_display = ("name", "member", "verified_at", "checked_at")
    search_fields = ("name", "member__email")
    exclude = ("dkim_private_key",)


@admin.register(MailingList)
class MailingListAdmin(ReadOnlyAdmin):
    list_display = ("name", "slug", "member", "domain", "signup_open", "archive_public")
    search_fields = ("name", "slug", "member__email")


@admin.register(Subscriber)
class SubscriberAdmin(ReadOnlyAdmin):
    list_display = ("email", "list", "status", "bounce_score", "last_bounce_on")
    list_filter = ("status",)
    search_fields = ("email",)


@admin.register(Campaign)
class CampaignAdmin(ReadOnlyAdmin):
    list_display = ("subject", "list", "state", "recipients", "submitted", "complaints")
    list_filter = ("state",)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "subscriber", "state", "attempts", "submitted_at")
    list_filter = ("state",)


for _model in (ConsentEvent, BounceEvent, InboundReport, SubscriberImport):
    admin.site.register(_model, ReadOnlyAdmin)
