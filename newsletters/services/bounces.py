"""Bounces, complaints and mailto unsubscribes that come back to the bounce domain."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
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
from newsletters.reports import Report, ReportError, essentials, parse_report
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
    locked: bool = False,
) -> BounceEvent:
    """Score a bounce the way Mailman does and suppress the address at the threshold.

    ``locked``: the caller read ``subscriber`` under its row lock in this transaction (the
    inbound path reads the delivery and locks its subscriber in one query).
    """
    if not locked:
        subscriber = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    score = subscriber.bounce_score
    last = subscriber.last_bounce_on
    if last is not None and today - last > STALE_AFTER:
        score = Decimal(0)
    if last != today:
        score += HARD_WEIGHT if kind == ReportKind.HARD else SOFT_WEIGHT
        subscriber.last_bounce_on = today
    subscriber.bounce_score = score
    fields = ["bounce_score", "last_bounce_on"]
    if score >= BOUNCE_THRESHOLD and subscriber.status in (
        SubscriberStatus.CONFIRMED,
        SubscriberStatus.PENDING,
    ):
        subscriber.status = SubscriberStatus.BOUNCED
        subscriber.status_changed_at = timezone.now()
        fields += ["status", "status_changed_at"]
    subscriber.save(update_fields=fields)
    event = BounceEvent.objects.create(
        subscriber=subscriber,
        delivery=delivery,
        kind=kind,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=score,
        report=report,
    )
    if delivery is not None:
        # Last: every bounce of the campaign updates this one row, and holds its lock until
        # the commit.
        Campaign.objects.filter(pk=delivery.campaign_id).update(bounces=F("bounces") + 1)
    return event


def complaint_record(
    *,
    subscriber: Subscriber,
    detail: str,
    reporter: str,
    delivery: Delivery | None = None,
    report: InboundReport | None = None,
    locked: bool = False,
) -> BounceEvent:
    """A complaint suppresses the address at once and may pause the campaign.

    One delivery is complained about once: a person pressing "spam" again, or a provider
    sending its report again with other bytes, changes nothing and returns the first event
    (the database holds one complaint per delivery). The campaign's count is therefore of
    people, and it pauses only with NEWSLETTER_PAUSE_MIN_COMPLAINERS of them and a rate above
    COMPLAINT_RATE: one person in a small campaign is no signal. ``locked`` as for
    bounce_record().
    """
    if not locked:
        subscriber = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    if delivery is not None:
        # Under the subscriber's lock: a second report for the same delivery waits for the
        # first and then finds its event.
        first = BounceEvent.objects.filter(delivery=delivery, kind=ReportKind.COMPLAINT).first()
        if first is not None:
            return first
    if subscriber.status in (SubscriberStatus.CONFIRMED, SubscriberStatus.PENDING):
        subscriber.status = SubscriberStatus.COMPLAINED
        subscriber.status_changed_at = timezone.now()
        subscriber.save(update_fields=["status", "status_changed_at"])
        _consent(
            subscriber,
            ConsentKind.UNSUBSCRIBE,
            source=f"complaint (feedback report from {reporter or 'a mailbox provider'})",
        )
    event = BounceEvent.objects.create(
        subscriber=subscriber,
        delivery=delivery,
        kind=ReportKind.COMPLAINT,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=subscriber.bounce_score,
        report=report,
    )
    if delivery is not None:
        # One statement counts and reads what the pause depends on (the row stays locked until
        # the commit); the campaign itself is read only when it is to pause.
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Campaign._meta.db_table} SET complaints = complaints + 1"  # noqa: S608  (the model's table name)
                " WHERE id = %s RETURNING complaints, complaints_acknowledged, submitted, state",
                [delivery.campaign_id],
            )
            complaints, acknowledged, submitted, state = cursor.fetchone()
        rate = Decimal(complaints) / Decimal(max(submitted, 1))
        if (
            state == CampaignState.SENDING
            and complaints > acknowledged
            and complaints >= settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS
            and rate > COMPLAINT_RATE
        ):
            campaign = Campaign.objects.get(pk=delivery.campaign_id)
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
    the beginnings of text parts), with the size that arrived; retention_purge() deletes it
    after NEWSLETTER_RETENTION_DAYS. Input that is no email is kept and dropped. A failure
    of this code is logged and the message kept for review, what it did undone: only the
    database being away raises (OperationalError, InterfaceError), which the endpoint turns
    into a try-again-later, since retrying helps only then.
    """
    inbound = tokens.classify_recipient(recipient)
    # Per recipient: one message to two addresses (a bounce and an unsubscribe) is two reports.
    digest = hashlib.sha256(recipient.lower().encode() + b"\0" + raw).hexdigest()
    kept = essentials(raw)
    to = recipient[:254]

    def keep(outcome: str = "") -> int | None:
        return _keep(
            sha256=digest, recipient=to, raw=kept, size=len(raw), type=inbound.kind, outcome=outcome
        )

    try:
        with transaction.atomic():
            report_id = keep()
            if report_id is None:
                return "duplicate"
            report = InboundReport(pk=report_id, recipient=to)
            outcome, report_type, reporter = _apply_report(report, inbound, kept)
            InboundReport.objects.filter(pk=report_id).update(
                outcome=outcome[:300], type=report_type, reporter=reporter[:30]
            )
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        # A shape of input this code did not foresee: retrying cannot help, and the traceback
        # is for the developers. What the report did is undone; the message stays, for review.
        log.exception("could not process a report to %s", to)
        outcome = f"error: not processed ({type(exc).__name__}); kept for review"
        with transaction.atomic():
            keep(outcome)
    return outcome


def _keep(
    *, sha256: str, recipient: str, raw: bytes, size: int, type: str, outcome: str = ""
) -> int | None:
    """Store an inbound message; None when its hash is stored already (a delivery repeated).

    One INSERT ... ON CONFLICT DO NOTHING rather than an INSERT in a savepoint that an
    IntegrityError rolls back: a third of the statements of processing a bounce.
    """
    table = InboundReport._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (sha256, recipient, received_at, type, reporter, outcome, raw,"  # noqa: S608  (names from the model, values as parameters)
            " size) VALUES (%s, %s, %s, %s, '', %s, %s, %s)"
            " ON CONFLICT (sha256) DO NOTHING RETURNING id",
            [sha256, recipient, timezone.now(), type, outcome, raw, size],
        )
        found = cursor.fetchone()
    return int(found[0]) if found else None


def _apply_report(
    report: InboundReport, inbound: tokens.Inbound, raw: bytes
) -> tuple[str, str, str]:
    """Act on one report: (what was done, the report's type, who sent it)."""
    if inbound.kind == "unsubscribe":
        try:
            subscriber = unsubscribe_by_token(token=inbound.token, source="mailto unsubscribe")
        except NewsletterError:
            return "unsubscribe: invalid token", "unsubscribe", ""
        done = f"unsubscribe: subscriber {subscriber.pk} is {subscriber.status}"
        return done, "unsubscribe", ""
    try:
        parsed = parse_report(raw)
    except ReportError as exc:
        # No header fields at all: nothing will ever read it, so it is dropped, not deferred
        # (a 4xx would have the MTA offer it again for days).
        log.warning("dropped a message to %s: %s", report.recipient, exc)
        return f"dropped: not an email message ({exc})", "unknown", ""
    return _apply_findings(report, inbound, parsed), parsed.type, parsed.reporter


def _apply_findings(report: InboundReport, inbound: tokens.Inbound, parsed: Report) -> str:
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
        # The delivery, with its subscriber read under the row lock that scoring needs.
        delivery = (
            Delivery.objects.select_related("subscriber")
            .select_for_update(of=("subscriber",))
            .filter(pk=delivery_id)
            .first()
        )
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
                locked=True,
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
                locked=True,
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
