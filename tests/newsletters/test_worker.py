"""Campaigns through a real Celery worker on the real broker and PostgreSQL.

10,000 subscribers into a real SMTP server on loopback: every message arrives, signed, with
the unsubscribe headers. Then the crash test: the worker is SIGKILLed three times during a
campaign and restarted; every subscriber gets exactly one message (counted by Message-ID at
the receiving end), none is lost, and each is charged once.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from newsletters import services, tokens
from newsletters.models import Campaign, CampaignState, Delivery, DeliveryState, SenderLimit
from newsletters.relay import DedupRelay
from panel.models import UsageEvent
from tests.conftest import SmtpSink, free_port, stop_worker
from tests.newsletters.fixtures import PRICE, add_confirmed, dkim_valid

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SUBSCRIBERS = 10_000
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.M | re.I)


def campaign_of(alice, mlist) -> Campaign:
    SenderLimit.objects.create(member=alice, per_minute=1_000_000)
    return services.campaign_create(
        mlist=mlist,
        actor=alice,
        subject="Harvest festival",
        text_body=(
            "Dear {{ name }},\nthe festival is on Saturday.\n\nUnsubscribe: {{ unsubscribe_url }}\n"
        ),
        html_body="<h1>Harvest festival</h1><p>Dear {{ name }}, see you on Saturday.</p>",
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def message_id_of(raw: bytes) -> str:
    found = MESSAGE_ID.search(raw)
    assert found, raw[:300]
    return found.group(1).decode()


def received(sink: SmtpSink, count: int) -> Callable[[], bool]:
    return lambda: len(sink.envelopes) >= count


def worker_env(smtp_port: int) -> dict[str, str]:
    return {
        "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "NEWSLETTER_LEASE_SECONDS": "5",
        "NEWSLETTER_MAINTENANCE_SECONDS": "1",
        "NEWSLETTER_SEND_BUDGET_SECONDS": "10",
    }


def test_ten_thousand_subscribers_all_arrive_signed_with_unsubscribe_headers(
    alice, alice_list, alice_domain, mail_rate, sink, worker_factory, artifacts
):
    add_confirmed(alice_list, SUBSCRIBERS)
    campaign = campaign_of(alice, alice_list)
    worker = worker_factory(**worker_env(sink.port))
    started = time.monotonic()
    services.campaign_start(campaign=campaign, actor=alice)
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENT,
        240,
        "the campaign to be sent",
        worker.log,
    )
    elapsed = time.monotonic() - started
    campaign.refresh_from_db()
    assert (campaign.recipients, campaign.submitted, campaign.failed) == (
        SUBSCRIBERS,
        SUBSCRIBERS,
        0,
    )
    assert len(sink.envelopes) == SUBSCRIBERS
    ids = Counter(message_id_of(raw) for _s, _r, raw in sink.envelopes)
    assert len(ids) == SUBSCRIBERS
    assert max(ids.values()) == 1
    recipients = {r[0] for _s, r, _raw in sink.envelopes}
    assert len(recipients) == SUBSCRIBERS
    for _sender, _rcpt, raw in sink.envelopes:
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nList-Unsubscribe: <http" in head
        assert b"<mailto:unsubscribe+" in head
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in head
        assert dkim_valid(raw, alice_domain)
    assert UsageEvent.objects.filter(service="newsletters").count() == SUBSCRIBERS
    (artifacts / "newsletter-10k.txt").write_text(
        f"10,000 messages through the worker in {elapsed:.1f}s\n"
    )


def test_sigkilling_the_worker_three_times_sends_every_message_exactly_once(
    alice, alice_list, alice_domain, mail_rate, worker_factory, tmp_path, artifacts
):
    add_confirmed(alice_list, SUBSCRIBERS)
    campaign = campaign_of(alice, alice_list)
    sink = SmtpSink()
    sink.start()
    relay = DedupRelay(
        host="127.0.0.1",
        port=free_port(),
        store=tmp_path / "relay-seen.sqlite3",
        next_hop=f"smtp://127.0.0.1:{sink.port}",
    )
    relay.start()
    try:
        env = worker_env(relay.port)
        worker = worker_factory(**env)
        services.campaign_start(campaign=campaign, actor=alice)
        kills = []
        for threshold in (2_000, 5_000, 8_000):
            wait_until(received(sink, threshold), 180, f"{threshold} messages", worker.log)
            in_flight = Delivery.objects.filter(
                campaign=campaign, state=DeliveryState.LEASED
            ).count()
            stop_worker(worker, kill=True)  # SIGKILL, mid-batch
            kills.append((len(sink.envelopes), in_flight))
            worker = worker_factory(**env)
        wait_until(
            lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENT,
            240,
            "the campaign to be sent after the crashes",
            worker.log,
        )
    finally:
        relay.stop()
        sink.stop()
    # Each subscriber got exactly one message: counted by Message-ID where mail arrives.
    ids = Counter(message_id_of(raw) for _s, _r, raw in sink.envelopes)
    expected = {
        tokens.message_id(d)
        for d in Delivery.objects.filter(campaign=campaign).values_list("pk", flat=True)
    }
    duplicates = sum(n - 1 for n in ids.values())
    missing = len(expected - set(ids))
    assert (duplicates, missing, len(ids)) == (0, 0, SUBSCRIBERS)
    # And the books agree: every delivery submitted once and charged once.
    states = Counter(Delivery.objects.filter(campaign=campaign).values_list("state", flat=True))
    assert states == {DeliveryState.SUBMITTED: SUBSCRIBERS}
    usage = UsageEvent.objects.filter(service="newsletters")
    assert usage.count() == SUBSCRIBERS
    assert sum(usage.values_list("amount", flat=True), Decimal(0)) == PRICE * SUBSCRIBERS
    (artifacts / "newsletter-crash.txt").write_text(
        f"kills at (received, leased): {kills}; the relay dropped {relay.dropped} "
        "resent messages it had already accepted\n"
    )
