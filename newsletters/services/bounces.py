"""Bounces, complaints and mailto unsubscribes that come back to the bounce domain."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import tokens
from newsletters.models import (
    BounceEvent,
    Campaign,
    CampaignState,
    ConsentKind,
    Delivery,
    InboundReport,
    ReportKind,
    Subscriber,
    SubscriberStatus,
)
from newsletters.reports import ReportError, essentials, parse_report
from newsletters.services.campaigns import campaign_pause
from newsletters.services.common import NewsletterError
from newsletters.services.lists import _consent, unsubscribe_by_token

log = logging.getLogger(__name__)

# Bounces, complaints, mailto unsubscribes ------------------------------------------------

HARD_WEIGHT = Decimal("1")
SOFT_WEIGHT = Decimal("0.5")
BOUNCE_THRESHOLD = Decimal("5")
STALE_AFTER = timedelta(days=7)
COMPLAINT_RATE = Decimal("0.003")


def bounce_record(
    *,
    subscriber: Subscriber,
    kind: str,
    today: date,
    detail: str = "",
    reporter: str = "",
    delivery: Delivery | None = None,
    report: InboundReport | None = None,
) -> BounceEvent:
    """Score a bounce the way Mailman does and suppress the address at the threshold."""
    locked = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    score = locked.bounce_score
    last = locked.last_bounce_on
    if last is not None and today - last > STALE_AFTER:
        score = Decimal(0)
    if last != today:
        score += HARD_WEIGHT if kind == ReportKind.HARD else SOFT_WEIGHT
        locked.last_bounce_on = today
    locked.bounce_score = score
    fields = ["bounce_score", "last_bounce_on"]
    if score >= BOUNCE_THRESHOLD and locked.status in (
        SubscriberStatus.CONFIRMED,
        SubscriberStatus.PENDING,
    ):
        locked.status = SubscriberStatus.BOUNCED
        locked.status_changed_at = timezone.now()
        fields += ["status", "status_changed_at"]
    locked.save(update_fields=fields)
    if delivery is not None:
        Campaign.objects.filter(pk=delivery.campaign_id).update(bounces=F("bounces") + 1)
    return BounceEvent.objects.create(
        subscriber=locked,
        delivery=delivery,
        kind=kind,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=score,
        report=report,
    )


def complaint_record(
    *,
    subscriber: Subscriber,
    detail: str,
    reporter: str,
    delivery: Delivery | None = None,
    report: InboundReport | None = None,
) -> BounceEvent:
    """A complaint suppresses the address at once and may pause the campaign.

    One delivery is complained about once: a person pressing "spam" again, or a provider
    sending its report again with other bytes, changes nothing and returns the first event
    (the database holds one complaint per delivery). The campaign's count is therefore of
    people, and it pauses only with NEWSLETTER_PAUSE_MIN_COMPLAINERS of them and a rate above
    COMPLAINT_RATE: one person in a small campaign is no signal.
    """
    locked = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    if delivery is not None:
        # Under the subscriber's lock: a second report for the same delivery waits for the
        # first and then finds its event.
        first = BounceEvent.objects.filter(delivery=delivery, kind=ReportKind.COMPLAINT).first()
        if first is not None:
            return first
    if locked.status in (SubscriberStatus.CONFIRMED, SubscriberStatus.PENDING):
        locked.status = SubscriberStatus.COMPLAINED
        locked.status_changed_at = timezone.now()
        locked.save(update_fields=["status", "status_changed_at"])
        _consent(
            locked,
            ConsentKind.UNSUBSCRIBE,
            source=f"complaint (feedback report from {reporter or 'a mailbox provider'})",
        )
    event = BounceEvent.objects.create(
        subscriber=locked,
        delivery=delivery,
        kind=ReportKind.COMPLAINT,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=locked.bounce_score,
        report=report,
    )
    if delivery is not None:
        Campaign.objects.filter(pk=delivery.campaign_id).update(complaints=F("complaints") + 1)
        campaign = Campaign.objects.select_for_update().get(pk=delivery.campaign_id)
        rate = Decimal(campaign.complaints) / Decimal(max(campaign.submitted, 1))
        if (
            campaign.state == CampaignState.SENDING
            and campaign.complaints > campaign.complaints_acknowledged
            and campaign.complaints >= settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS
            and rate > COMPLAINT_RATE
        ):
            campaign_pause(
                campaign=campaign,
                actor=None,
                reason=_(
                    "Paused by the panel: %(n)d complaints for %(sent)d messages sent is "
                    "%(rate)s%%, above 0.3%%."
                )
                % {
                    "n": campaign.complaints,
                    "sent": campaign.submitted,
                    "rate": (rate * 100).quantize(Decimal("0.01")),
                },
            )
    return event


def report_receive(*, raw: bytes, recipient: str) -> str:
    """Take one message that arrived for the bounce domain; returns what was done with it.

    Kept once by its hash (an MTA that delivers twice does nothing twice). A bounce is
    traced by its VERP address, else by the Message-ID of the returned original; a complaint
    by that Message-ID, else by the original's VERP return path; both carry an HMAC tag, so a
    forged report matches nothing.

    Only what the parser reads is stored (reports.essentials: header fields, report parts,
    the beginnings of text parts), with the size that arrived; retention_purge() empties it
    after NEWSLETTER_RETENTION_DAYS. Input that is no email is kept and dropped. A failure
    of this code is logged and the message kept for review, its changes undone: only the
    database being away raises (OperationalError, InterfaceError), which the endpoint turns
    into a try-again-later, since retrying helps only then.
    """
    inbound = tokens.classify_recipient(recipient)
    # Per recipient: one message to two addresses (a bounce and an unsubscribe) is two reports.
    digest = hashlib.sha256(recipient.lower().encode() + b"\0" + raw).hexdigest()
    kept = essentials(raw)
    with transaction.atomic():
        try:
            with transaction.atomic():
                report = InboundReport.objects.create(
                    sha256=digest,
                    recipient=recipient[:254],
                    type=inbound.kind,
                    raw=kept,
                    size=len(raw),
                )
        except IntegrityError:
            return "duplicate"
        try:
            with transaction.atomic():
                outcome = _apply_report(report, inbound, kept)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            # A shape of input this code did not foresee: retrying cannot help, and the
            # traceback is for the developers. What the report did is undone; it stays kept.
            log.exception("could not process the report %s to %s", report.pk, report.recipient)
            outcome = f"error: not processed ({type(exc).__name__}); kept for review"
        InboundReport.objects.filter(pk=report.pk).update(outcome=outcome[:300])
    return outcome


def _apply_report(report: InboundReport, inbound: tokens.Inbound, raw: bytes) -> str:
    if inbound.kind == "unsubscribe":
        try:
            subscriber = unsubscribe_by_token(token=inbound.token, source="mailto unsubscribe")
        except NewsletterError:
            return "unsubscribe: invalid token"
        return f"unsubscribe: subscriber {subscriber.pk} is {subscriber.status}"
    try:
        parsed = parse_report(raw)
    except ReportError as exc:
        # No header fields at all: nothing will ever read it, so it is dropped, not deferred
        # (a 4xx would have the MTA offer it again for days).
        log.warning("dropped a message to %s: %s", report.recipient, exc)
        InboundReport.objects.filter(pk=report.pk).update(type="unknown")
        return f"dropped: not an email message ({exc})"
    InboundReport.objects.filter(pk=report.pk).update(type=parsed.type, reporter=parsed.reporter)
    if not parsed.findings:
        return f"{parsed.type}: nothing to act on"
    verp_delivery = tokens.delivery_from_tag(inbound.token) if inbound.kind == "bounce" else None
    done: list[str] = []
    today = timezone.localdate()
    for finding in parsed.findings:
        delivery_id = (
            tokens.delivery_from_message_id(finding.message_id)
            or verp_delivery
            or _delivery_from_return_path(finding.verp)
        )
        if delivery_id is None:
            # Our Feedback-ID names the campaign but carries no tag, so it never traces a
            # report (a forged one would suppress someone); it tells people where it came from.
            named = f" (Feedback-ID {finding.feedback_id})" if finding.feedback_id else ""
            done.append(f"{finding.kind}: no matching delivery{named}")
            continue
        delivery = Delivery.objects.select_related("subscriber").filter(pk=delivery_id).first()
        if delivery is None:
            done.append(f"{finding.kind}: delivery {delivery_id} is gone")
            continue
        subscriber = delivery.subscriber
        if finding.address and verp_delivery is None and finding.address != subscriber.email:
            # Traced through the report's contents only, and it names someone else: do not
            # guess. (The envelope's VERP address is the one the bounce was sent to.)
            done.append(f"{finding.kind}: address does not match delivery {delivery_id}")
            continue
        if finding.kind == "complaint":
            event = complaint_record(
                subscriber=subscriber,
                detail=finding.detail,
                reporter=parsed.reporter,
                delivery=delivery,
                report=report,
            )
            if event.report_id != report.pk:
                done.append(f"complaint: subscriber {subscriber.pk} (already counted)")
                continue
        else:
            bounce_record(
                subscriber=subscriber,
                kind=finding.kind,
                today=today,
                detail=finding.detail,
                reporter=parsed.reporter,
                delivery=delivery,
                report=report,
            )
        done.append(f"{finding.kind}: subscriber {subscriber.pk}")
        if verp_delivery is not None:
            break  # a VERP bounce is about its one delivery
    return "; ".join(done)


def _delivery_from_return_path(address: str) -> int | None:
    """The delivery a VERP return path names (checked by its tag), or None."""
    found = tokens.classify_recipient(address) if address else None
    if found is None or found.kind != "bounce":
        return None
    return tokens.delivery_from_tag(found.token)
