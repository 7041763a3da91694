"""Sending in-process against a real SMTP server on loopback: what arrives, what is charged,
what a 4xx or a 5xx does, suppression after a claim, the rate limit, leases."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from newsletters import services, tokens
from newsletters.models import (
    BounceEvent,
    Campaign,
    CampaignState,
    Delivery,
    DeliveryState,
    SenderLimit,
    Subscriber,
    SubscriberStatus,
)
from newsletters.services import sending
from panel.models import UsageEvent
from tests.newsletters.fixtures import PRICE, add_confirmed, dkim_valid

pytestmark = pytest.mark.django_db


def make_campaign(mlist, alice, **kwargs):
    return services.campaign_create(
        mlist=mlist,
        actor=alice,
        subject=kwargs.get("subject", "Spring planting"),
        text_body=kwargs.get(
            "text_body", "Hello {{ name }},\nthe beans are in.\nLeave: {{ unsubscribe_url }}\n"
        ),
        html_body=kwargs.get(
            "html_body",
            "<p>Hello {{ name }}, the beans are in.</p><a href='{{ unsubscribe_url }}'>x</a>",
        ),
    )


def start(campaign, alice, capture):
    with capture(execute=True):
        services.campaign_start(campaign=campaign, actor=alice)


def drain(campaign, rounds=50):
    """Run the sender in-process until the campaign is done or must wait; returns which.

    The eager tasks of campaign_start may have sent everything already: then it is "done".
    """
    for _ in range(rounds):
        outcome = services.campaign_send(campaign_id=campaign.pk, budget_seconds=30)
        if outcome.next == "stopped" and Campaign.objects.get(pk=campaign.pk).state == "sent":
            return sending.SendOutcome("done")
        if outcome.next in ("done", "stopped", "wait"):
            return outcome
    raise AssertionError("the campaign did not finish")


def test_a_campaign_arrives_signed_with_list_headers_and_is_charged_at_cost(
    alice, alice_list, alice_domain, sink, mail_rate, django_capture_on_commit_callbacks
):
    readers = add_confirmed(alice_list, 30)
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    outcome = drain(campaign)
    assert outcome.next == "done"
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.SENT
    assert (campaign.recipients, campaign.submitted, campaign.failed) == (30, 30, 0)

    assert len(sink.envelopes) == 30
    by_rcpt = {rcpt[0]: (sender, raw) for sender, rcpt, raw in sink.envelopes}
    assert set(by_rcpt) == {r.email for r in readers}
    message_ids = set()
    for reader in readers:
        sender, raw = by_rcpt[reader.email]
        delivery = Delivery.objects.get(campaign=campaign, subscriber=reader)
        # The envelope sender names the delivery (VERP) and so does the Message-ID.
        assert sender == tokens.return_path(delivery.pk)
        assert dkim_valid(raw, alice_domain), reader.email
        head = raw.split(b"\r\n\r\n", 1)[0].decode()
        found_id = re.search(r"^Message-ID: <([^>]+)>", head, re.M | re.I)
        assert found_id
        msgid = found_id.group(1)
        assert tokens.delivery_from_message_id(msgid) == delivery.pk
        message_ids.add(msgid)
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
        found_unsub = re.search(r"^List-Unsubscribe: ([^\r\n]*(?:\r\n [^\r\n]*)*)", head, re.M)
        assert found_unsub
        unsub = found_unsub.group(1)
        assert "<https://" in unsub or "<http://" in unsub
        assert "<mailto:unsubscribe+" in unsub
        assert f"Feedback-ID: c{campaign.pk}:l{alice_list.pk}:m{alice.pk}:commune-panel" in head
        assert "List-Id: Garden notes <garden-notes.list-id." in head
        assert f"Reader {reader.email[6:-12]}" in raw.decode()  # merge field {{ name }}
    assert len(message_ids) == 30

    usage = UsageEvent.objects.filter(service="newsletters", member=alice)
    assert usage.count() == 30
    assert sum(u.amount for u in usage) == PRICE * 30
    assert all(u.cost_rate_id == mail_rate.pk for u in usage)


def test_a_retried_sender_sends_nothing_twice(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 10)
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    drain(campaign)
    # The same task again (a broker redelivery) and a second prepare: nothing new.
    assert services.campaign_send(campaign_id=campaign.pk).next == "stopped"
    assert services.campaign_prepare(campaign_id=campaign.pk) == 0
    assert len(sink.envelopes) == 10
    assert UsageEvent.objects.filter(service="newsletters").count() == 10


def test_a_4xx_defers_with_backoff_and_a_later_attempt_delivers(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    readers = add_confirmed(alice_list, 5)
    sink.replies[readers[2].email] = "451 4.2.0 Mailbox busy, try later"
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    outcome = drain(campaign)
    assert outcome.next == "wait"
    deferred = Delivery.objects.get(campaign=campaign, subscriber=readers[2])
    assert deferred.state == DeliveryState.DEFERRED
    assert deferred.attempts == 1
    assert "451" in deferred.response
    assert deferred.next_attempt_at > timezone.now() + timedelta(seconds=50)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENDING
    assert UsageEvent.objects.filter(service="newsletters").count() == 4

    # The mailbox is free again and the backoff is over.
    del sink.replies[readers[2].email]
    Delivery.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now())
    assert drain(campaign).next == "done"
    deferred.refresh_from_db()
    assert (deferred.state, deferred.attempts) == (DeliveryState.SUBMITTED, 2)
    assert UsageEvent.objects.filter(service="newsletters").count() == 5


def test_a_5xx_suppresses_the_address_for_good(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    readers = add_confirmed(alice_list, 4)
    sink.replies[readers[1].email] = "550 5.1.1 No such user"
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    assert drain(campaign).next == "done"
    failed = Delivery.objects.get(campaign=campaign, subscriber=readers[1])
    assert failed.state == DeliveryState.FAILED
    readers[1].refresh_from_db()
    assert readers[1].status == SubscriberStatus.BOUNCED
    assert BounceEvent.objects.get(subscriber=readers[1]).kind == "refused"
    campaign.refresh_from_db()
    assert (campaign.submitted, campaign.failed) == (3, 1)
    # Not charged, and not in the next campaign.
    assert UsageEvent.objects.filter(service="newsletters").count() == 3
    second = make_campaign(alice_list, alice, subject="Summer")
    start(second, alice, django_capture_on_commit_callbacks)
    drain(second)
    assert not Delivery.objects.filter(campaign=second, subscriber=readers[1]).exists()
    assert [r for _s, r, _raw in sink.envelopes].count([readers[1].email]) == 0


def test_an_address_that_unsubscribes_after_its_batch_was_claimed_gets_nothing(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    readers = add_confirmed(alice_list, 6)
    campaign = make_campaign(alice_list, alice)
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_start(campaign=campaign, actor=alice)
    services.campaign_prepare(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    token = uuid.uuid4()
    batch = sending._claim(campaign, token, timezone.now())
    assert batch is not None
    assert len(batch) == 6
    assert Delivery.objects.filter(state=DeliveryState.LEASED).count() == 6
    # Between the claim and the sending, one unsubscribes and one bounces for good.
    services.unsubscribe_by_token(
        token=tokens.unsubscribe_token(readers[0].pk), source="one-click unsubscribe (RFC 8058)"
    )
    Subscriber.objects.filter(pk=readers[1].pk).update(status=SubscriberStatus.BOUNCED)
    from newsletters.compose import Composer
    from newsletters.smtp import Relay

    with Relay() as relay:
        chunk = sending._send_chunk(relay, Composer(campaign, alice_list), token, batch)
    sending._commit(campaign, token, chunk, sending._message_rate(timezone.localdate()))
    sent_to = {r[0] for _s, r, _raw in sink.envelopes}
    assert readers[0].email not in sent_to
    assert readers[1].email not in sent_to
    assert len(sent_to) == 4
    skipped = Delivery.objects.filter(campaign=campaign, state=DeliveryState.SKIPPED)
    assert set(skipped.values_list("subscriber_id", flat=True)) == {readers[0].pk, readers[1].pk}
    assert Campaign.objects.get(pk=campaign.pk).skipped == 2


def test_the_members_rate_limit_spreads_a_campaign_over_minutes(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 25)
    SenderLimit.objects.create(member=alice, per_minute=10)
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    outcome = services.campaign_send(campaign_id=campaign.pk)
    assert outcome.next == "wait"
    assert 0 < outcome.delay <= 61
    # The eager tasks during start already used this minute's allowance, or this call did.
    assert len(sink.envelopes) == 10
    # The next minute.
    SenderLimit.objects.filter(member=alice).update(
        window_start=timezone.now() - timedelta(minutes=1)
    )
    services.campaign_send(campaign_id=campaign.pk)
    assert len(sink.envelopes) == 20


def test_a_relay_that_is_down_gives_the_batch_back(
    alice, alice_list, mail_rate, settings, django_capture_on_commit_callbacks
):
    from tests.conftest import free_port

    settings.NEWSLETTER_SMTP_URL = f"smtp://127.0.0.1:{free_port()}"
    add_confirmed(alice_list, 5)
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    outcome = services.campaign_send(campaign_id=campaign.pk)
    assert outcome.next == "wait"
    states = set(Delivery.objects.filter(campaign=campaign).values_list("state", "attempts"))
    assert states == {(DeliveryState.QUEUED, 0)}
    assert UsageEvent.objects.filter(service="newsletters").count() == 0


def test_an_expired_lease_returns_and_the_maintenance_job_restarts_senders(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 3)
    campaign = make_campaign(alice_list, alice)
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_start(campaign=campaign, actor=alice)
    services.campaign_prepare(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    # A sender claims, then its worker dies: the rows stay leased until the lease runs out.
    sending._claim(campaign, uuid.uuid4(), timezone.now())
    past = timezone.now() - timedelta(seconds=1)
    Delivery.objects.filter(campaign=campaign).update(lease_until=past)
    Campaign.objects.filter(pk=campaign.pk).update(heartbeat_at=past)
    with django_capture_on_commit_callbacks(execute=True):
        done = services.maintenance()
    assert done["returned"] == 3
    assert done["revived"] == 1
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.SENT
    assert len(sink.envelopes) == 3


def test_pause_stops_between_chunks_and_resume_goes_on(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 60)
    campaign = make_campaign(alice_list, alice)
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_start(campaign=campaign, actor=alice)
    services.campaign_prepare(campaign_id=campaign.pk)
    services.campaign_pause(campaign=campaign, actor=alice)
    assert services.campaign_send(campaign_id=campaign.pk).next == "stopped"
    assert sink.envelopes == []
    with django_capture_on_commit_callbacks(execute=True):
        services.campaign_resume(campaign=Campaign.objects.get(pk=campaign.pk), actor=alice)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENT
    assert len(sink.envelopes) == 60


def test_cancel_skips_what_is_left(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 8)
    campaign = make_campaign(alice_list, alice)
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_start(campaign=campaign, actor=alice)
    services.campaign_prepare(campaign_id=campaign.pk)
    cancelled = services.campaign_cancel(campaign=campaign, actor=alice)
    assert cancelled.state == CampaignState.CANCELLED
    assert cancelled.skipped == 8
    assert services.campaign_send(campaign_id=campaign.pk).next == "stopped"
    assert sink.envelopes == []


def test_usage_is_charged_in_decimal_at_the_rate_of_the_day(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 3)
    campaign = make_campaign(alice_list, alice)
    start(campaign, alice, django_capture_on_commit_callbacks)
    drain(campaign)
    amounts = list(UsageEvent.objects.values_list("amount", flat=True))
    assert all(isinstance(a, Decimal) and a == PRICE for a in amounts)
