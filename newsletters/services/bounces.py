"""Bounces, complaints and mailto unsubscribes that come back to the bounce domain."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import tokens
from newsletters.models import (
    BounceEvent,
    Campaign,
    CampaignState,
    ConsentEvent,
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
from newsletters.services.lists import unsubscribe_by_token

log = logging.getLogger(__name__)

# Bounces, complaints, mailto unsubscribes ------------------------------------------------

HARD_WEIGHT = Decimal("1")
SOFT_WEIGHT = Decimal("0.5")
BOUNCE_THRESHOLD = Decimal("5")
STALE_AFTER = timedelta(days=7)
COMPLAINT_RATE = Decimal("0.003")


# The inbound endpoint's statements are written as SQL: the ORM took longer to build them
# than PostgreSQL to run them (reading a delivery with its subscriber under FOR UPDATE OF:
# 1.3 ms through the ORM, 0.2 ms as SQL; an UPDATE or INSERT 0.35 ms against 0.12 ms), and
# they are most of what a bounce costs (bench/inbound.py). Table names come from the models.
_SUBSCRIBER = Subscriber._meta.db_table
_EVENT = BounceEvent._meta.db_table
_CAMPAIGN = Campaign._meta.db_table
_CONSENT = ConsentEvent._meta.db_table
_DELIVERY = Delivery._meta.db_table

_LOCKED_FIELDS = ["id", "list_id", "email", "status", "bounce_score", "last_bounce_on"]
_LOCKED_COLUMNS = ", ".join(f"s.{name}" for name in _LOCKED_FIELDS)
_READ_LOCKED = (
    f"SELECT d.campaign_id, {_LOCKED_COLUMNS} FROM {_DELIVERY} d"  # noqa: S608
    f" JOIN {_SUBSCRIBER} s ON s.id = d.subscriber_id WHERE d.id = %(delivery)s FOR UPDATE OF s"
)
# The score, the event, and the campaign's count, in one statement (the campaign's row, which
# every bounce of the campaign updates, stays locked until the commit).
_BOUNCE = (
    f"WITH scored AS (UPDATE {_SUBSCRIBER} SET bounce_score = %(score)s,"  # noqa: S608
    " last_bounce_on = %(last)s,"
    " status = CASE WHEN %(suppress)s THEN %(bounced)s ELSE status END,"
    " status_changed_at = CASE WHEN %(suppress)s THEN %(at)s ELSE status_changed_at END"
    f" WHERE id = %(subscriber)s), counted AS (UPDATE {_CAMPAIGN} SET bounces = bounces + 1"
    f" WHERE id = %(campaign)s) INSERT INTO {_EVENT} (subscriber_id, delivery_id, kind, at,"
    " detail, reporter, score_after, report_id) VALUES (%(subscriber)s, %(delivery)s, %(kind)s,"
    " %(at)s, %(detail)s, %(reporter)s, %(score)s, %(report)s) RETURNING id"
)
# The database's one complaint per delivery decides: a second report of the same delivery
# (waiting on the subscriber's lock meanwhile) inserts nothing.
_COMPLAINT = (
    f"INSERT INTO {_EVENT} (subscriber_id, delivery_id, kind, at, detail, reporter,"  # noqa: S608
    " score_after, report_id) VALUES (%(subscriber)s, %(delivery)s, %(kind)s, %(at)s,"
    " %(detail)s, %(reporter)s, %(score)s, %(report)s)"
    " ON CONFLICT (delivery_id) WHERE kind = 'complaint' DO NOTHING RETURNING id"
)
# The status and its consent event (an unsubscribe, by the complaint) together.
_COMPLAINED = (
    f"WITH changed AS (UPDATE {_SUBSCRIBER} SET status = %(complained)s,"  # noqa: S608
    " status_changed_at = %(at)s WHERE id = %(subscriber)s RETURNING id)"
    f" INSERT INTO {_CONSENT} (subscriber_id, kind, at, ip, user_agent, source)"
    " SELECT id, %(unsubscribe)s, %(at)s, NULL, '', %(source)s FROM changed"
)
# Counts the complaint and reads what the pause depends on (the row stays locked until the
# commit); the campaign itself is read only when it is to pause.
_COMPLAINT_COUNT = (
    f"UPDATE {_CAMPAIGN} SET complaints = complaints + 1 WHERE id = %(campaign)s"  # noqa: S608
    " RETURNING complaints, complaints_acknowledged, submitted, state"
)
_OUTCOME = (
    f"UPDATE {InboundReport._meta.db_table} SET outcome = %(outcome)s, type = %(type)s,"  # noqa: S608
    " reporter = %(reporter)s WHERE id = %(report)s"
)


def _one(cursor: Any) -> tuple[Any, ...]:
    """The one row a statement returns (RETURNING of a row that exists)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the statement returned no row")
    return tuple(row)


def _delivery_locked(delivery_id: int) -> Delivery | None:
    """The delivery, with its subscriber read under the row lock that scoring needs."""
    with connection.cursor() as cursor:
        cursor.execute(_READ_LOCKED, {"delivery": delivery_id})
        row = cursor.fetchone()
    if row is None:
        return None
    # The other fields are deferred: reading one would query it.
    subscriber = Subscriber.from_db(connection.alias, _LOCKED_FIELDS, row[1:])
    delivery = Delivery(pk=delivery_id, campaign_id=row[0], subscriber_id=subscriber.pk)
    delivery.subscriber = subscriber
    return delivery


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
    inbound path reads it with the delivery, _delivery_locked()).
    """
    if not locked:
        subscriber = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    score = subscriber.bounce_score
    last = subscriber.last_bounce_on
    if last is not None and today - last > STALE_AFTER:
        score = Decimal(0)
    if last != today:
        score += HARD_WEIGHT if kind == ReportKind.HARD else SOFT_WEIGHT
        last = today
    suppress = score >= BOUNCE_THRESHOLD and subscriber.status in (
        SubscriberStatus.CONFIRMED,
        SubscriberStatus.PENDING,
    )
    now = timezone.now()
    event = BounceEvent(
        subscriber=subscriber,
        delivery=delivery,
        kind=kind,
        at=now,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=score,
        report=report,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _BOUNCE,
            {
                "score": score,
                "last": last,
                "suppress": suppress,
                "bounced": SubscriberStatus.BOUNCED,
                "at": now,
                "subscriber": subscriber.pk,
                "campaign": delivery.campaign_id if delivery is not None else None,
                "delivery": event.delivery_id,
                "kind": event.kind,
                "detail": event.detail,
                "reporter": event.reporter,
                "report": event.report_id,
            },
        )
        event.pk = _one(cursor)[0]
    subscriber.bounce_score, subscriber.last_bounce_on = score, last
    if suppress:
        subscriber.status, subscriber.status_changed_at = SubscriberStatus.BOUNCED, now
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
    now = timezone.now()
    event = BounceEvent(
        subscriber=subscriber,
        delivery=delivery,
        kind=ReportKind.COMPLAINT,
        at=now,
        detail=detail[:300],
        reporter=reporter[:30],
        score_after=subscriber.bounce_score,
        report=report,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _COMPLAINT,
            {
                "subscriber": subscriber.pk,
                "delivery": event.delivery_id,
                "kind": event.kind,
                "at": now,
                "detail": event.detail,
                "reporter": event.reporter,
                "score": event.score_after,
                "report": event.report_id,
            },
        )
        inserted = cursor.fetchone()
        if inserted is None:
            return BounceEvent.objects.get(delivery=delivery, kind=ReportKind.COMPLAINT)
        event.pk = inserted[0]
        if subscriber.status in (SubscriberStatus.CONFIRMED, SubscriberStatus.PENDING):
            source = f"complaint (feedback report from {reporter or 'a mailbox provider'})"
            cursor.execute(
                _COMPLAINED,
                {
                    "complained": SubscriberStatus.COMPLAINED,
                    "at": now,
                    "subscriber": subscriber.pk,
                    "unsubscribe": ConsentKind.UNSUBSCRIBE,
                    "source": source[:300],
                },
            )
            subscriber.status, subscriber.status_changed_at = SubscriberStatus.COMPLAINED, now
        if delivery is None:
            return event
        cursor.execute(_COMPLAINT_COUNT, {"campaign": delivery.campaign_id})
        complaints, acknowledged, submitted, state = _one(cursor)
    rate = Decimal(complaints) / Decimal(max(submitted, 1))
    if (
        state == CampaignState.SENDING
        and complaints > acknowledged
        and complaints >= settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS
        and rate > COMPLAINT_RATE
    ):
        campaign_pause(
            campaign=Campaign.objects.get(pk=delivery.campaign_id),
            actor=None,
            reason=_(
                "Paused by the panel: %(n)d complaints for %(sent)d messages sent is "
                "%(rate)s%%, above 0.3%%."
            )
            % {
                "n": complaints,
                "sent": submitted,
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
            with connection.cursor() as cursor:
                cursor.execute(
                    _OUTCOME,
                    {
                        "outcome": outcome[:300],
                        "type": report_type,
                        "reporter": reporter[:30],
                        "report": report_id,
                    },
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
        delivery = _delivery_locked(delivery_id)
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
