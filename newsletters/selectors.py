"""Newsletter reads. Every lookup by id is scoped to its owner: another member's object is a 404."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from newsletters import dkim
from newsletters.models import (
    BounceEvent,
    Campaign,
    CampaignState,
    ConsentEvent,
    ConsentKind,
    DeliveryState,
    MailingList,
    ReportKind,
    SendingDomain,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
)
from panel.models import User


def domains_of(member: User) -> QuerySet[SendingDomain]:
    return SendingDomain.objects.filter(member=member)


def domain_of(member: User, pk: int) -> SendingDomain:
    return get_object_or_404(SendingDomain, pk=pk, member=member)


def domain_claims(query: str) -> QuerySet[SendingDomain]:
    """For the admins: every member's claims of the names containing `query`, verified first."""
    found = SendingDomain.objects.select_related("member")
    if query:
        found = found.filter(name__contains=query)
    return found.order_by("name", "verified_at", "created_at")[:200]


def domain_claim(pk: int) -> SendingDomain:
    return get_object_or_404(SendingDomain.objects.select_related("member"), pk=pk)


def verified_domains_of(member: User) -> QuerySet[SendingDomain]:
    return domains_of(member).filter(verified_at__isnull=False)


def lists_of(member: User) -> QuerySet[MailingList]:
    return (
        MailingList.objects.filter(member=member)
        .select_related("domain")
        .annotate(
            confirmed=Count("subscribers", filter=Q(subscribers__status=SubscriberStatus.CONFIRMED))
        )
    )


def list_of(member: User, pk: int) -> MailingList:
    return get_object_or_404(MailingList.objects.select_related("domain"), pk=pk, member=member)


def public_list(slug: str) -> MailingList:
    return get_object_or_404(MailingList.objects.select_related("domain"), slug=slug)


def campaign_of(member: User, pk: int) -> Campaign:
    return get_object_or_404(
        Campaign.objects.select_related("list__domain"), pk=pk, list__member=member
    )


def campaigns_of(mlist: MailingList) -> QuerySet[Campaign]:
    return Campaign.objects.filter(list=mlist)


def subscriber_of(member: User, list_pk: int, pk: int) -> Subscriber:
    return get_object_or_404(
        Subscriber.objects.select_related("list"), pk=pk, list_id=list_pk, list__member=member
    )


def subscriber_for_unsubscribe(pk: int) -> Subscriber:
    """For the public unsubscribe page; the token was checked by the caller."""
    return get_object_or_404(Subscriber.objects.select_related("list"), pk=pk)


def import_of(member: User, pk: int) -> SubscriberImport:
    return get_object_or_404(
        SubscriberImport.objects.select_related("list"), pk=pk, list__member=member
    )


def subscribers(mlist: MailingList, *, query: str = "", status: str = "") -> QuerySet[Subscriber]:
    found = Subscriber.objects.filter(list=mlist)
    if query:
        found = found.filter(Q(email__icontains=query) | Q(name__icontains=query))
    if status in SubscriberStatus.values:
        found = found.filter(status=status)
    return found.order_by("email")


def consent_history(subscriber: Subscriber) -> QuerySet[ConsentEvent]:
    return ConsentEvent.objects.filter(subscriber=subscriber).order_by("at", "id")


def bounce_history(subscriber: Subscriber) -> QuerySet[BounceEvent]:
    return BounceEvent.objects.filter(subscriber=subscriber).order_by("-at")[:50]


@dataclass(frozen=True)
class ListStats:
    by_status: dict[str, int]
    bounce_events_30d: int
    complaints_30d: int

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def list_stats(mlist: MailingList) -> ListStats:
    from datetime import timedelta

    from django.utils import timezone

    counts = dict(
        Subscriber.objects.filter(list=mlist)
        .values("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    since = timezone.now() - timedelta(days=30)
    events = BounceEvent.objects.filter(subscriber__list=mlist, at__gte=since)
    return ListStats(
        by_status={s: counts.get(s, 0) for s in SubscriberStatus.values},
        bounce_events_30d=events.exclude(kind=ReportKind.COMPLAINT).count(),
        complaints_30d=events.filter(kind=ReportKind.COMPLAINT).count(),
    )


@dataclass(frozen=True)
class Progress:
    campaign: Campaign
    done: int
    percent: int
    complaint_rate: Decimal
    bounce_rate: Decimal
    open_states: dict[str, int]


def campaign_progress(campaign: Campaign) -> Progress:
    """What the progress bar shows; counters live on the campaign row, so this is cheap."""
    fresh = Campaign.objects.select_related("list__domain").get(pk=campaign.pk)
    done = fresh.submitted + fresh.failed + fresh.skipped
    total = fresh.recipients
    percent = 100 if fresh.state == CampaignState.SENT else (done * 100 // total if total else 0)
    sent = Decimal(max(fresh.submitted, 1))
    open_states: dict[str, int] = {}
    if fresh.state in (CampaignState.SENDING, CampaignState.PAUSED):
        open_states = {
            str(DeliveryState(state).label): n
            for state, n in fresh.deliveries.filter(
                state__in=[DeliveryState.QUEUED, DeliveryState.LEASED, DeliveryState.DEFERRED]
            )
            .values("state")
            .annotate(n=Count("id"))
            .values_list("state", "n")
        }
    return Progress(
        campaign=fresh,
        done=done,
        percent=min(100, percent),
        complaint_rate=(Decimal(fresh.complaints) * 100 / sent).quantize(Decimal("0.01")),
        bounce_rate=(Decimal(fresh.bounces) * 100 / sent).quantize(Decimal("0.01")),
        open_states=open_states,
    )


@dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    value: str
    purpose: str


def dns_records(domain: SendingDomain) -> list[DnsRecord]:
    """The records a member publishes; DKIM makes the domain verified, SPF and DMARC help."""
    return [
        DnsRecord(domain.dkim_name, "TXT", dkim.dns_record_value(domain.dkim_public_key), "dkim"),
        DnsRecord(
            domain.name, "TXT", f"v=spf1 include:{settings.NEWSLETTER_SPF_INCLUDE} ~all", "spf"
        ),
        DnsRecord(
            f"_dmarc.{domain.name}",
            "TXT",
            f"v=DMARC1; p=none; rua=mailto:dmarc@{domain.name}",
            "dmarc",
        ),
    ]


def archive(mlist: MailingList) -> QuerySet[Campaign]:
    return Campaign.objects.filter(list=mlist, state=CampaignState.SENT).order_by("-finished_at")


def archived_campaign(mlist: MailingList, pk: int) -> Campaign:
    return get_object_or_404(archive(mlist), pk=pk)


def can_read_archive(mlist: MailingList, user: Any) -> bool:
    return mlist.archive_public or (user.is_authenticated and user.pk == mlist.member_id)


EXPORT_COLUMNS = [
    "email",
    "name",
    "status",
    "subscribed_at",
    "subscribed_from",
    "confirmed_at",
    "status_changed_at",
    "bounce_score",
]


# A spreadsheet reads a cell that begins with one of these as a formula (OWASP, CSV
# injection); names, addresses and consent sources come from strangers and imports.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A value as the export writes it: text that a spreadsheet would run gets a leading quote.

    The quote makes the cell text in Excel, LibreOffice and Google Sheets, and is visible, so
    nothing is silently changed.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export_rows(mlist: MailingList) -> Iterator[str]:
    """The list as CSV, streamed in pages: a big list is never loaded whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(EXPORT_COLUMNS)
    yield flush()
    found = (
        Subscriber.objects.filter(list=mlist)
        .annotate(
            subscribed_at=Min(
                "consent_events__at", filter=Q(consent_events__kind=ConsentKind.SUBSCRIBE)
            )
        )
        .order_by("id")
    )
    last = 0
    while True:
        page = list(found.filter(id__gt=last)[:2000])
        if not page:
            return
        firsts = dict(
            ConsentEvent.objects.filter(subscriber__in=page, kind=ConsentKind.SUBSCRIBE)
            .order_by("subscriber_id", "at")
            .values_list("subscriber_id", "source")
        )
        for s in page:
            writer.writerow(
                [
                    _cell(value)
                    for value in (
                        s.email,
                        s.name,
                        s.status,
                        s.subscribed_at.isoformat() if s.subscribed_at else "",
                        firsts.get(s.pk, ""),
                        s.confirmed_at.isoformat() if s.confirmed_at else "",
                        s.status_changed_at.isoformat(),
                        s.bounce_score,
                    )
                ]
            )
        last = page[-1].pk
        yield flush()


def outbox(limit: int = 100) -> list[dict[str, Any]]:
    """The demo's sink: the newest messages the demo relay wrote into its Maildir."""
    if not settings.NEWSLETTER_OUTBOX_DIR:
        raise Http404
    from email import message_from_bytes
    from email.header import decode_header, make_header

    new = Path(settings.NEWSLETTER_OUTBOX_DIR) / "new"
    files = sorted(new.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
    shown = []
    for path in files:
        raw = path.read_bytes()
        message = message_from_bytes(raw)

        def header(name: str, message: Any = message) -> str:
            return str(make_header(decode_header(message.get(name, ""))))

        text = ""
        for part in message.walk():
            if part.get_content_type() == "text/plain":
                payload = part.get_payload(decode=True)
                text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
                break
        shown.append(
            {
                "name": path.name,
                "from": header("From"),
                "to": header("To"),
                "subject": header("Subject"),
                "date": header("Date"),
                "message_id": header("Message-ID"),
                "dkim": "DKIM-Signature" in message,
                "unsubscribe": header("List-Unsubscribe"),
                "text": text[:4000],
            }
        )
    return shown
