"""One-off messages from a list: confirmation requests and test copies."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from newsletters import tokens
from newsletters.compose import Composer, Recipient, single_message
from newsletters.models import (
    Campaign,
    ConsentEvent,
    ConsentKind,
    MailingList,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
)
from newsletters.services.lists import confirm_token
from newsletters.services.sending import _message_rate
from newsletters.smtp import Relay, SmtpError
from panel.services import record_usage
from panel.services.ledger import LedgerError

log = logging.getLogger(__name__)


# Single messages: confirmations and test copies ------------------------------------------


def _charge_single(mlist: MailingList, key: str) -> None:
    try:
        rate = _message_rate(timezone.localdate())
    except LedgerError:
        log.warning("no newsletter cost rate; %s not charged", key)
        return
    record_usage(
        member=mlist.member,
        service="newsletters",
        kind="message",
        quantity=Decimal(1),
        unit=rate.unit,
        unit_cost=rate.unit_cost,
        cost_source=rate,
        occurred_at=timezone.now(),
        source_key=key,
    )


def send_confirmation(*, subscriber_id: int, event_id: int) -> bool:
    """Mail the confirmation link; its Message-ID comes from the consent event, so a retried
    task is dropped by the relay instead of mailing twice."""
    subscriber = Subscriber.objects.select_related("list__domain", "list__member").get(
        pk=subscriber_id
    )
    if subscriber.status != SubscriberStatus.PENDING:
        return False
    mlist = subscriber.list
    url = f"{settings.PANEL_BASE_URL}/newsletters/confirm/{confirm_token(subscriber, event_id)}/"
    context = {"list": mlist, "url": url, "subscriber": subscriber}
    subject = render_to_string("newsletters/email/confirm_subject.txt", context).strip()
    message = single_message(
        mlist,
        to=subscriber.email,
        subject=subject,
        text=render_to_string("newsletters/email/confirm_message.txt", context),
        page=render_to_string("newsletters/email/confirm_message.html", context),
        message_id=f"c{event_id}.{tokens._tag('confirm', str(event_id), 10)}"
        f"@{settings.NEWSLETTER_BOUNCE_DOMAIN}",
    )
    with Relay() as relay:
        relay.send(
            sender=f"bounces@{settings.NEWSLETTER_BOUNCE_DOMAIN}",
            recipient=subscriber.email,
            message=message,
        )
    _charge_single(mlist, f"confirm:{event_id}")
    return True


def send_import_confirmations(*, import_id: int) -> int:
    job = SubscriberImport.objects.get(pk=import_id)
    prefix = f"import {job.pk}: "
    events = ConsentEvent.objects.filter(
        subscriber__list_id=job.list_id,
        subscriber__status=SubscriberStatus.PENDING,
        kind=ConsentKind.SUBSCRIBE,
        source__startswith=prefix,
    ).values_list("subscriber_id", "pk")
    sent = 0
    for subscriber_id, event_id in events.iterator():
        try:
            sent += send_confirmation(subscriber_id=subscriber_id, event_id=event_id)
        except SmtpError as exc:
            if exc.permanent:
                continue
            raise
    return sent


def send_test(*, campaign_id: int, to: str, key: str) -> None:
    campaign = Campaign.objects.select_related("list__domain", "list__member").get(pk=campaign_id)
    composer = Composer(campaign, campaign.list)
    message = composer.build(
        Recipient(0, 0, to, ""),
        message_id=f"t{key[:24]}@{settings.NEWSLETTER_BOUNCE_DOMAIN}",
    )
    with Relay() as relay:
        relay.send(
            sender=f"bounces@{settings.NEWSLETTER_BOUNCE_DOMAIN}", recipient=to, message=message
        )
    _charge_single(campaign.list, f"test:{key}")
