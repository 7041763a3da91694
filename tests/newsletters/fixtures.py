"""Newsletter fixtures: alice's verified domain (through a real DNS server on loopback), her
list, confirmed subscribers, the co-op's price per message, and an SMTP sink as the relay."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from typing import Any

import dkim as dkimpy
import pytest
from django.utils import timezone

from newsletters import dkim, inbound, services
from newsletters.models import (
    Campaign,
    ConsentEvent,
    ConsentKind,
    Delivery,
    DeliveryState,
    MailingList,
    SendingDomain,
    Subscriber,
    SubscriberStatus,
)
from panel.models import CostRate, Supplier, User
from panel.services.ledger import cost_rate_set
from tests.conftest import SmtpSink, free_port
from tests.newsletters.dnsserver import ZoneServer

PRICE = Decimal("0.000400")


@contextmanager
def inbound_endpoint() -> Iterator[int]:
    """The panel's inbound endpoint (manage.py newsletter_inbound) on a free loopback port."""
    port = free_port()
    controller = inbound.server("127.0.0.1", port, ["127.0.0.0/8"])
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def submitted_delivery(member: User, **campaign: Any) -> Delivery:
    """A delivery the relay accepted, to the one reader of a list from the member's verified
    alice-news.example: its bounce or complaint is recognised."""
    domain = services.domain_add(member=member, name="alice-news.example")
    SendingDomain.objects.filter(pk=domain.pk).update(verified_at="2026-01-01T00:00Z")
    mlist = MailingList.objects.create(
        member=member, name="L", slug="l", domain=domain, from_name="L", from_local="l"
    )
    reader = add_confirmed(mlist, 1)[0]
    sent = Campaign.objects.create(list=mlist, subject="s", text_body="t", **campaign)
    return Delivery.objects.create(campaign=sent, subscriber=reader, state=DeliveryState.SUBMITTED)


@pytest.fixture
def mail_rate(carol: User) -> CostRate:
    supplier = Supplier.objects.create(name="Relay server rent")
    return cost_rate_set(
        actor=carol,
        service="newsletters",
        kind="message",
        unit="message",
        unit_cost=PRICE,
        supplier=supplier,
        reference="INV-2026-MAIL",
        valid_from=date(2020, 1, 1),
    )


@pytest.fixture
def sink(settings) -> Iterator[SmtpSink]:
    """The relay, as far as the panel can tell: a real SMTP server on loopback."""
    server = SmtpSink()
    server.start()
    settings.NEWSLETTER_SMTP_URL = f"smtp://127.0.0.1:{server.port}"
    yield server
    server.stop()


def publish(zone: ZoneServer, domain: SendingDomain) -> None:
    zone.set_txt(domain.dkim_name, dkim.dns_record_value(domain.dkim_public_key))


@pytest.fixture
def alice_domain(alice: User, dns_zone: ZoneServer) -> SendingDomain:
    domain = services.domain_add(member=alice, name="alice-news.example")
    publish(dns_zone, domain)
    checked = services.domain_check(domain=domain, actor=alice)
    assert checked.verified
    return checked


@pytest.fixture
def alice_list(alice: User, alice_domain: SendingDomain) -> MailingList:
    return services.list_create(
        member=alice,
        name="Garden notes",
        slug="garden-notes",
        description="What grows in the commune garden.",
        domain=alice_domain,
        from_name="Alice's garden",
        from_local="garden",
        signup_open=True,
        archive_public=True,
    )


def add_confirmed(mlist: MailingList, n: int, *, start: int = 0) -> list[Subscriber]:
    """``n`` confirmed subscribers with consent events, as an import would leave them."""
    now = timezone.now()
    Subscriber.objects.bulk_create(
        [
            Subscriber(
                list=mlist,
                email=f"reader{i}@example.net",
                name=f"Reader {i}",
                status=SubscriberStatus.CONFIRMED,
                confirmed_at=now,
            )
            for i in range(start, start + n)
        ],
        batch_size=5000,
    )
    found = list(
        Subscriber.objects.filter(
            list=mlist, email__in=[f"reader{i}@example.net" for i in range(start, start + n)]
        ).order_by("id")
    )
    ConsentEvent.objects.bulk_create(
        [
            ConsentEvent(subscriber=s, kind=kind, source="test fixture", at=now)
            for s in found
            for kind in (ConsentKind.SUBSCRIBE, ConsentKind.CONFIRM)
        ],
        batch_size=5000,
    )
    return found


def dkim_valid(raw: bytes, domain: SendingDomain) -> bool:
    record = dkim.dns_record_value(domain.dkim_public_key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name.decode().rstrip(".") == domain.dkim_name else b""

    return bool(dkimpy.verify(raw, dnsfunc=dnsfunc))
