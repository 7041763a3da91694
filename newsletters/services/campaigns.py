"""Campaigns: drafts, schedules, and the state machine around sending."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import validation
from newsletters.compose import check_merge_fields
from newsletters.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryState,
    MailingList,
    Subscriber,
    SubscriberStatus,
)
from newsletters.services.common import NewsletterError, _require_member, _valid
from panel.audit import audit_record, snapshot
from panel.models import User
from panel.services.ledger import LedgerError, cost_rate_at
from panel.tasking import enqueue_on_commit

# Campaigns -------------------------------------------------------------------------------

CAMPAIGN_FIELDS = ("subject", "state", "scheduled_at", "pause_reason")


def _campaign_values(subject: str, text_body: str, html_body: str) -> dict[str, str]:
    clean_subject = _valid(validation.header_text, subject, _("The subject"), max_length=200)
    if not clean_subject:
        raise NewsletterError(_("A campaign needs a subject."))
    text = _valid(validation.body_text, text_body, _("The plain text"))
    page = _valid(validation.body_text, html_body, _("The HTML"))
    if not text.strip():
        raise NewsletterError(_("A campaign needs a plain text version."))
    _valid(check_merge_fields, text, _("The plain text"))
    _valid(check_merge_fields, page, _("The HTML"))
    return {"subject": clean_subject, "text_body": text, "html_body": page}


@transaction.atomic
def campaign_create(
    *, mlist: MailingList, actor: User, subject: str, text_body: str, html_body: str = ""
) -> Campaign:
    _require_member(actor)
    campaign = Campaign.objects.create(
        list=mlist, **_campaign_values(subject, text_body, html_body)
    )
    audit_record(
        actor=actor,
        action="newsletters.campaign_created",
        obj=campaign,
        owner=mlist.member,
        after=snapshot(campaign, CAMPAIGN_FIELDS),
    )
    return campaign


@transaction.atomic
def campaign_update(
    *, campaign: Campaign, actor: User, subject: str, text_body: str, html_body: str = ""
) -> Campaign:
    values = _campaign_values(subject, text_body, html_body)
    before = snapshot(campaign, CAMPAIGN_FIELDS)
    if not Campaign.objects.filter(pk=campaign.pk, state=CampaignState.DRAFT).update(**values):
        raise NewsletterError(_("Only a draft can be edited; unschedule it first."))
    campaign.refresh_from_db()
    audit_record(
        actor=actor,
        action="newsletters.campaign_changed",
        obj=campaign,
        owner=campaign.list.member,
        before=before,
        after=snapshot(campaign, CAMPAIGN_FIELDS),
    )
    return campaign


def _preflight(campaign: Campaign) -> None:
    """What must hold before a campaign sends anything, each with a message that says so."""
    mlist = MailingList.objects.select_related("domain").get(pk=campaign.list_id)
    if not mlist.domain.verified:
        raise NewsletterError(
            _(
                "%(domain)s is not verified: publish its DKIM record and check it on the "
                "domain's page before sending from %(address)s."
            )
            % {"domain": mlist.domain.name, "address": mlist.from_address}
        )
    try:
        cost_rate_at(service="newsletters", kind="message", day=timezone.localdate())
    except LedgerError:
        raise NewsletterError(
            _("The co-op has no price for newsletter messages yet; the admins must set one.")
        ) from None
    if not Subscriber.objects.filter(list=mlist, status=SubscriberStatus.CONFIRMED).exists():
        raise NewsletterError(_("The list has no confirmed subscribers."))


def _transition(
    campaign: Campaign,
    *,
    actor: User | None,
    action: str,
    from_states: Sequence[str],
    error: str,
    **changes: Any,
) -> Campaign:
    before = snapshot(campaign, CAMPAIGN_FIELDS)
    if not Campaign.objects.filter(pk=campaign.pk, state__in=from_states).update(**changes):
        raise NewsletterError(error)
    campaign.refresh_from_db()
    audit_record(
        actor=actor,
        action=action,
        obj=campaign,
        owner=campaign.list.member,
        before=before,
        after=snapshot(campaign, CAMPAIGN_FIELDS),
    )
    return campaign


@transaction.atomic
def campaign_schedule(*, campaign: Campaign, actor: User, at: datetime) -> Campaign:
    if at <= timezone.now():
        raise NewsletterError(_("Choose a time in the future."))
    _preflight(campaign)
    return _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_scheduled",
        from_states=[CampaignState.DRAFT],
        error=_("Only a draft can be scheduled."),
        state=CampaignState.SCHEDULED,
        scheduled_at=at,
    )


@transaction.atomic
def campaign_unschedule(*, campaign: Campaign, actor: User) -> Campaign:
    return _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_unscheduled",
        from_states=[CampaignState.SCHEDULED],
        error=_("The campaign is not scheduled."),
        state=CampaignState.DRAFT,
        scheduled_at=None,
    )


@transaction.atomic
def campaign_start(*, campaign: Campaign, actor: User | None) -> Campaign:
    """Start sending now (or at its scheduled time, from the maintenance job)."""
    _preflight(campaign)
    now = timezone.now()
    campaign = _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_started",
        from_states=[CampaignState.DRAFT, CampaignState.SCHEDULED],
        error=_("The campaign has already started."),
        state=CampaignState.SENDING,
        started_at=now,
        pause_reason="",
        heartbeat_at=now + timedelta(seconds=settings.NEWSLETTER_LEASE_SECONDS),
    )
    from newsletters import tasks

    enqueue_on_commit(tasks.prepare_campaign, campaign.pk)
    return campaign


@transaction.atomic
def campaign_pause(*, campaign: Campaign, actor: User | None, reason: str = "") -> Campaign:
    return _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_paused",
        from_states=[CampaignState.SENDING],
        error=_("Only a campaign that is sending can be paused."),
        state=CampaignState.PAUSED,
        pause_reason=reason[:300],
    )


@transaction.atomic
def campaign_resume(*, campaign: Campaign, actor: User) -> Campaign:
    _preflight(campaign)
    now = timezone.now()
    campaign = _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_resumed",
        from_states=[CampaignState.PAUSED],
        error=_("Only a paused campaign can be resumed."),
        state=CampaignState.SENDING,
        pause_reason="",
        # The member has seen the complaints so far; only new ones pause it again.
        complaints_acknowledged=F("complaints"),
        heartbeat_at=now + timedelta(seconds=settings.NEWSLETTER_LEASE_SECONDS),
    )
    _dispatch(campaign.pk)
    return campaign


@transaction.atomic
def campaign_cancel(*, campaign: Campaign, actor: User) -> Campaign:
    campaign = _transition(
        campaign,
        actor=actor,
        action="newsletters.campaign_cancelled",
        from_states=[
            CampaignState.DRAFT,
            CampaignState.SCHEDULED,
            CampaignState.SENDING,
            CampaignState.PAUSED,
        ],
        error=_("The campaign has already finished."),
        state=CampaignState.CANCELLED,
        finished_at=timezone.now(),
    )
    # Leased rows are a sender's; it skips them when it sees the state (or its lease ends).
    skipped = Delivery.objects.filter(
        campaign=campaign, state__in=[DeliveryState.QUEUED, DeliveryState.DEFERRED]
    ).update(state=DeliveryState.SKIPPED)
    Campaign.objects.filter(pk=campaign.pk).update(skipped=F("skipped") + skipped)
    campaign.refresh_from_db()
    return campaign


def campaign_test_send(*, campaign: Campaign, actor: User, to: str) -> None:
    """Send one copy to one of the member's own verified addresses."""
    from allauth.account.models import EmailAddress

    address = _valid(validation.normalise_email, to)
    if not EmailAddress.objects.filter(user=actor, email__iexact=address, verified=True).exists():
        raise NewsletterError(_("Test copies go only to your own verified addresses."))
    from newsletters import tasks

    with transaction.atomic():
        audit_record(
            actor=actor,
            action="newsletters.campaign_test_sent",
            obj=campaign,
            owner=campaign.list.member,
            after={"to": address},
        )
        enqueue_on_commit(tasks.send_test, campaign.pk, address, uuid.uuid4().hex)


def _dispatch(campaign_id: int) -> None:
    from newsletters import tasks

    for _slot in range(settings.NEWSLETTER_SENDERS_PER_CAMPAIGN):
        enqueue_on_commit(tasks.send_campaign, campaign_id)
