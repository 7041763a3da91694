"""Bounces and complaints as real MTAs and providers send them: scores, statuses, pauses, and
the SMTP endpoint they arrive at."""

from __future__ import annotations

import smtplib
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletters import inbound, services, tokens
from newsletters.models import (
    BounceEvent,
    Campaign,
    CampaignState,
    ConsentEvent,
    Delivery,
    DeliveryState,
    InboundReport,
    Subscriber,
    SubscriberStatus,
)
from tests.conftest import free_port
from tests.newsletters import samples
from tests.newsletters.fixtures import add_confirmed

pytestmark = pytest.mark.django_db

HARD = [
    "postfix_hard",
    "postfix_expired",
    "postfix_smtputf8",
    "exim_hard",
    "exim_dsn",
    "sendmail_hard",
    "qmail_hard",
    "gmail_hard",
    "gmail_inbox_full",
    "yahoo_hard",
    "microsoft_hard",
    "office365_expired",
    "headers_only_dsn",
    "forwarded_bounce",
]
SOFT = ["postfix_delayed", "sendmail_delayed"]
COMPLAINTS = [
    "yahoo_arf",
    "yahoo_arf_unredacted",
    "microsoft_arf",
    "microsoft_jmrp",
    "arf_headers_only",
    "arf_global_headers",
    "forwarded_arf",
]
# Sent on by a person or an abuse desk to the feedback address, not to the VERP address.
FORWARDED = ["forwarded_bounce", "forwarded_arf"]
# From a gateway that does not say which software it is.
UNNAMED = ["headers_only_dsn"]


@pytest.fixture
def sent(alice, alice_list):
    """Three deliveries of a campaign that is sending (as if the relay had accepted them)."""
    readers = add_confirmed(alice_list, 3)
    campaign = services.campaign_create(
        mlist=alice_list, actor=alice, subject="News", text_body="Hi {{ name }}"
    )
    Campaign.objects.filter(pk=campaign.pk).update(
        state=CampaignState.SENDING, recipients=3, submitted=3
    )
    for reader in readers:
        Delivery.objects.create(campaign=campaign, subscriber=reader, state=DeliveryState.SUBMITTED)
    return Campaign.objects.get(pk=campaign.pk), readers


def report_for(name: str, delivery: Delivery) -> tuple[bytes, str]:
    verp = tokens.return_path(delivery.pk)
    raw = samples.load(
        name,
        rcpt=delivery.subscriber.email,
        message_id=tokens.message_id(delivery.pk),
        verp=verp,
        fbl="fbl@bounces.localhost",
    )
    to = (
        "fbl@bounces.localhost"
        if name in COMPLAINTS or name in FORWARDED or name == "arf_not_spam"
        else verp
    )
    return raw, to


@pytest.mark.parametrize("name", HARD + SOFT)
def test_bounces_from_real_mtas_score_the_subscriber(sent, name):
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw, to = report_for(name, delivery)
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome.endswith(f"subscriber {readers[0].pk}"), outcome
    event = BounceEvent.objects.get(subscriber=readers[0])
    expected = ("hard", Decimal("1.0")) if name in HARD else ("soft", Decimal("0.5"))
    assert (event.kind, event.score_after) == expected
    assert event.delivery_id == delivery.pk
    assert event.reporter or name in UNNAMED
    readers[0].refresh_from_db()
    assert readers[0].bounce_score == expected[1]
    assert readers[0].status == SubscriberStatus.CONFIRMED  # below the threshold
    assert Campaign.objects.get(pk=campaign.pk).bounces == 1
    # The MTA delivers the same report again: nothing twice.
    assert services.report_receive(raw=raw, recipient=to) == "duplicate"
    assert BounceEvent.objects.count() == 1


@pytest.mark.parametrize("name", COMPLAINTS)
def test_complaints_suppress_at_once_and_are_counted(sent, name, settings):
    # One complainer is enough here, to see the pause; the default asks for more (item 5).
    settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS = 1
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[1])
    raw, to = report_for(name, delivery)
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome == f"complaint: subscriber {readers[1].pk}", outcome
    readers[1].refresh_from_db()
    assert readers[1].status == SubscriberStatus.COMPLAINED
    unsubscribed = ConsentEvent.objects.get(subscriber=readers[1], kind="unsubscribe")
    assert unsubscribed.source.startswith("complaint (feedback report from")
    campaign.refresh_from_db()
    assert campaign.complaints == 1
    # One complaint in three messages is far above 0.3%: the campaign pauses itself.
    assert campaign.state == CampaignState.PAUSED
    assert "above 0.3%" in campaign.pause_reason


@pytest.mark.parametrize("name", ["arf_not_spam", "autoreply"])
def test_not_spam_reports_and_auto_replies_change_nothing(sent, name):
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw, to = report_for(name, delivery)
    assert services.report_receive(raw=raw, recipient=to).endswith("nothing to act on")
    assert not BounceEvent.objects.exists()
    assert Subscriber.objects.get(pk=readers[0].pk).status == SubscriberStatus.CONFIRMED


def test_a_forged_message_id_or_verp_matches_nothing(sent):
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    forged_id = f"d{delivery.pk}.aaaaaaaaaa@bounces.localhost"
    raw = samples.load(
        "yahoo_arf_unredacted", rcpt=readers[0].email, message_id=forged_id, verp="x@y"
    )
    assert "no matching delivery" in services.report_receive(
        raw=raw, recipient="fbl@bounces.localhost"
    )
    bounce = samples.load("postfix_hard", rcpt=readers[0].email, message_id=forged_id)
    forged_verp = f"bounces+d{delivery.pk}.aaaaaaaaaa@bounces.localhost"
    assert "no matching delivery" in services.report_receive(raw=bounce, recipient=forged_verp)
    assert Subscriber.objects.get(pk=readers[0].pk).status == SubscriberStatus.CONFIRMED


def test_a_report_about_someone_else_is_not_pinned_on_the_delivery(sent):
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw = samples.load(
        "microsoft_arf", rcpt="someone.else@example.com", message_id=tokens.message_id(delivery.pk)
    )
    outcome = services.report_receive(raw=raw, recipient="fbl@bounces.localhost")
    assert "address does not match" in outcome
    assert Subscriber.objects.get(pk=readers[0].pk).status == SubscriberStatus.CONFIRMED


def test_mailmans_scoring_one_bounce_a_day_threshold_five_stale_after_a_week(alice_list):
    reader = add_confirmed(alice_list, 1)[0]
    day = date(2026, 11, 2)

    def bounce(kind: str, when: date) -> Subscriber:
        services.bounce_record(subscriber=reader, kind=kind, today=when)
        return Subscriber.objects.get(pk=reader.pk)

    assert bounce("hard", day).bounce_score == 1
    assert bounce("hard", day).bounce_score == 1  # the same day counts once
    assert bounce("soft", day + timedelta(days=1)).bounce_score == Decimal("1.5")
    # Nine days of silence: the old score is stale and starts again.
    assert bounce("hard", day + timedelta(days=10)).bounce_score == 1
    for n in range(11, 15):
        found = bounce("hard", day + timedelta(days=n))
    assert found.bounce_score == 5
    assert found.status == SubscriberStatus.BOUNCED


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from(["hard", "soft"]), st.integers(min_value=0, max_value=60)),
        min_size=1,
        max_size=25,
    )
)
def test_scores_never_exceed_one_a_day_and_suppression_is_for_good(alice_list, bounces):
    reader = Subscriber.objects.create(
        list=alice_list, email="scored@example.org", status=SubscriberStatus.CONFIRMED
    )
    start = date(2026, 1, 1)
    days: set[date] = set()
    was_bounced = False
    for kind, offset in sorted(bounces, key=lambda b: b[1]):
        when = start + timedelta(days=offset)
        days.add(when)
        services.bounce_record(subscriber=reader, kind=kind, today=when)
        now = Subscriber.objects.get(pk=reader.pk)
        assert now.bounce_score <= len(days)
        if now.bounce_score >= 5:
            was_bounced = True
        assert (now.status == SubscriberStatus.BOUNCED) == was_bounced
    BounceEvent.objects.filter(subscriber=reader).delete()
    Subscriber.objects.filter(pk=reader.pk).delete()


def test_the_complaint_rate_pauses_above_three_per_thousand_and_resume_acknowledges(
    sent, alice, mail_rate, django_capture_on_commit_callbacks
):
    campaign, _readers = sent
    more = add_confirmed(campaign.list, 6, start=100)
    deliveries = [
        Delivery.objects.create(campaign=campaign, subscriber=s, state=DeliveryState.SUBMITTED)
        for s in more
    ]
    Campaign.objects.filter(pk=campaign.pk).update(submitted=1000, recipients=1000)
    for delivery in deliveries[:3]:
        services.complaint_record(
            subscriber=delivery.subscriber, detail="abuse", reporter="yahoo", delivery=delivery
        )
    campaign.refresh_from_db()
    assert (campaign.complaints, campaign.state) == (3, CampaignState.SENDING)  # 0.3%: not above
    services.complaint_record(
        subscriber=deliveries[3].subscriber,
        detail="abuse",
        reporter="yahoo",
        delivery=deliveries[3],
    )
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.PAUSED
    assert "4 complaints for 1000 messages sent is 0.40%" in campaign.pause_reason
    with django_capture_on_commit_callbacks(execute=False):
        services.campaign_resume(campaign=campaign, actor=alice)
    campaign.refresh_from_db()
    assert (campaign.state, campaign.complaints_acknowledged) == (CampaignState.SENDING, 4)
    # More sent since; a new complaint at 5 in 2000 (0.25%) does not pause it again.
    Campaign.objects.filter(pk=campaign.pk).update(submitted=2000)
    services.complaint_record(
        subscriber=deliveries[4].subscriber, detail="abuse", reporter="aol", delivery=deliveries[4]
    )
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENDING


# What the outside review found (issue 14) ------------------------------------------------


def _delivery_to(campaign: Campaign, email: str) -> Delivery:
    reader = Subscriber.objects.create(
        list=campaign.list, email=email, status=SubscriberStatus.CONFIRMED
    )
    return Delivery.objects.create(
        campaign=campaign, subscriber=reader, state=DeliveryState.SUBMITTED
    )


@pytest.mark.parametrize("local", ["xxxxx", "*****", "unredacted.fan", "redacted"])
@pytest.mark.parametrize("name", ["postfix_hard", "exim_hard", "qmail_hard"])
def test_a_bounce_for_an_address_that_looks_masked_counts_by_its_verp(sent, name, local):
    """Item 3: the address alone decided nothing; the VERP address says whose bounce it is."""
    campaign, _readers = sent
    delivery = _delivery_to(campaign, f"{local}@example.net")
    raw, to = report_for(name, delivery)
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome == f"hard: subscriber {delivery.subscriber_id}", outcome
    assert Subscriber.objects.get(pk=delivery.subscriber_id).bounce_score == 1


@pytest.mark.parametrize("local", ["xxxxx", "*****", "unredacted.fan"])
def test_a_complaint_for_an_address_that_looks_masked_counts_by_its_message_id(
    sent, local, settings
):
    campaign, _readers = sent
    delivery = _delivery_to(campaign, f"{local}@example.net")
    raw, to = report_for("microsoft_arf", delivery)
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome == f"complaint: subscriber {delivery.subscriber_id}", outcome
    assert Subscriber.objects.get(pk=delivery.subscriber_id).status == SubscriberStatus.COMPLAINED


def test_a_complaint_without_message_id_is_traced_by_its_verp(sent):
    """Item 1: a feedback loop that strips the Message-ID leaves the VERP return path."""
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[2])
    raw, to = report_for("arf_headers_only", delivery)
    raw = raw.replace(f"Message-ID: <{tokens.message_id(delivery.pk)}>\n".encode(), b"")
    assert f"<{tokens.message_id(delivery.pk)}>".encode() not in raw
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome == f"complaint: subscriber {readers[2].pk}", outcome
    # A forged tag in the return path matches nothing.
    other = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    forged, _to = report_for("arf_headers_only", other)
    forged = forged.replace(f"Message-ID: <{tokens.message_id(other.pk)}>\n".encode(), b"")
    forged = forged.replace(
        tokens.return_path(other.pk).encode(),
        f"bounces+d{other.pk}.aaaaaaaaaa@bounces.localhost".encode(),
    )
    assert "no matching delivery" in services.report_receive(raw=forged, recipient=to)
    assert Subscriber.objects.get(pk=readers[0].pk).status == SubscriberStatus.CONFIRMED


def test_a_complaint_traced_by_its_verp_about_someone_else_is_not_pinned(sent):
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw = samples.load(
        "microsoft_arf",
        rcpt="someone.else@example.com",
        message_id="elsewhere@example.com",
        verp=tokens.return_path(delivery.pk),
    )
    outcome = services.report_receive(raw=raw, recipient="fbl@bounces.localhost")
    assert "address does not match" in outcome
    assert Subscriber.objects.get(pk=readers[0].pk).status == SubscriberStatus.CONFIRMED


def test_the_same_complaint_35_times_counts_once_and_pauses_nothing(sent, settings):
    """Item 5: one recipient, one delivery, 35 copies that differ by a byte: one complaint."""
    campaign, readers = sent
    Campaign.objects.filter(pk=campaign.pk).update(submitted=10_000, recipients=10_000)
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw, to = report_for("microsoft_arf", delivery)
    outcomes = set()
    for n in range(35):
        changed = raw.replace(
            b"Date: Sat, 15 Mar 2025 07:12:51", b"Date: Sat, 15 Mar 2025 07:%02d:51" % n
        )
        outcomes.add(services.report_receive(raw=changed, recipient=to))
    assert InboundReport.objects.count() == 35  # every copy is kept, none is counted twice
    assert BounceEvent.objects.filter(kind="complaint").count() == 1
    campaign.refresh_from_db()
    assert (campaign.complaints, campaign.state) == (1, CampaignState.SENDING)
    assert outcomes == {
        f"complaint: subscriber {readers[0].pk}",
        f"complaint: subscriber {readers[0].pk} (already counted)",
    }
    # The same again through the other report forms (headers only, JMRP): still one.
    for name in ("arf_headers_only", "microsoft_jmrp", "yahoo_arf"):
        again, again_to = report_for(name, delivery)
        services.report_receive(raw=again, recipient=again_to)
    assert Campaign.objects.get(pk=campaign.pk).complaints == 1


def test_a_pause_needs_a_minimum_of_distinct_complainers(sent, settings):
    """Item 5: one person in a hundred is 1 %, far above 0.3 %, and still no reason to stop."""
    settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS = 3
    campaign, readers = sent
    Campaign.objects.filter(pk=campaign.pk).update(submitted=100, recipients=100)
    deliveries = [Delivery.objects.get(campaign=campaign, subscriber=r) for r in readers]
    for n, delivery in enumerate(deliveries[:2]):
        raw, to = report_for("microsoft_arf", delivery)
        services.report_receive(raw=raw, recipient=to)
        # The same person complaining again is no second complainer.
        services.report_receive(raw=raw + b"\n", recipient=to)
        campaign.refresh_from_db()
        assert (campaign.complaints, campaign.state) == (n + 1, CampaignState.SENDING)
    raw, to = report_for("yahoo_arf", deliveries[2])
    services.report_receive(raw=raw, recipient=to)
    campaign.refresh_from_db()
    assert (campaign.complaints, campaign.state) == (3, CampaignState.PAUSED)
    assert "3 complaints for 100 messages sent is 3.00%" in campaign.pause_reason


def test_input_that_is_no_email_is_dropped_with_a_log_line_not_deferred(sent, caplog):
    """Item 2: retrying can never make it readable, so it is accepted, kept and dropped."""
    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    verp = tokens.return_path(delivery.pk)
    for raw in (b"", b"\r\n\r\n", b"just a sentence, no header fields at all", b"\x00\xff\xfe"):
        outcome = services.report_receive(raw=raw, recipient=verp)
        assert outcome.startswith("dropped: not an email message"), outcome
    assert not BounceEvent.objects.exists()
    assert set(InboundReport.objects.values_list("type", flat=True)) == {"unknown"}
    assert not [r for r in caplog.records if r.exc_info]


# The SMTP endpoint, over a real socket ---------------------------------------------------


@pytest.fixture
def endpoint(transactional_db):
    port = free_port()
    controller = inbound.server("127.0.0.1", port, ["127.0.0.0/8"])
    controller.start()
    yield port
    controller.stop()


def test_the_inbound_endpoint_takes_bounces_and_refuses_other_addresses(
    endpoint, alice, statutes, carol
):
    domain = services.domain_add(member=alice, name="alice-news.example")
    from newsletters.models import MailingList, SendingDomain

    SendingDomain.objects.filter(pk=domain.pk).update(verified_at="2026-01-01T00:00Z")
    mlist = MailingList.objects.create(
        member=alice, name="L", slug="l", domain=domain, from_name="L", from_local="l"
    )
    reader = add_confirmed(mlist, 1)[0]
    campaign = Campaign.objects.create(list=mlist, subject="s", text_body="t")
    delivery = Delivery.objects.create(
        campaign=campaign, subscriber=reader, state=DeliveryState.SUBMITTED
    )
    raw, verp = report_for("postfix_hard", delivery)
    with smtplib.SMTP("127.0.0.1", endpoint) as smtp:
        smtp.ehlo()
        code, _ = smtp.mail("")
        assert code == 250
        code, text = smtp.rcpt("postmaster@bounces.localhost")
        assert code == 550, text
        code, _ = smtp.rcpt("someone@elsewhere.example")
        assert code == 550
        assert smtp.rcpt(verp)[0] == 250
        # On the wire, lines end in CRLF (the sample files are stored with LF).
        code, text = smtp.data(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        assert code == 250, text
    reader.refresh_from_db()
    assert reader.bounce_score == 1
    assert InboundReport.objects.get().type == "dsn"


def test_the_inbound_endpoint_refuses_peers_outside_its_networks(transactional_db):
    port = free_port()
    controller = inbound.server("127.0.0.1", port, ["10.0.0.0/8"])
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.ehlo()
            code, _text = smtp.mail("")
            assert code == 554
    finally:
        controller.stop()


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n", b"no header fields, just words\r\n", b"\x00\x01garbage\xff\r\n", b" \t\r\n\r\n"],
)
def test_the_endpoint_accepts_and_drops_what_is_no_email_instead_of_deferring(
    endpoint, raw, caplog
):
    """Item 2: a 451 made the MTA retry for days what can never be read."""
    verp = "bounces+d1.aaaaaaaaaa@bounces.localhost"
    with smtplib.SMTP("127.0.0.1", endpoint) as smtp:
        smtp.ehlo()
        assert smtp.mail("")[0] == 250
        assert smtp.rcpt(verp)[0] == 250
        code, text = smtp.data(raw)
    assert code == 250, text
    report = InboundReport.objects.get()
    assert report.outcome.startswith("dropped: not an email message")
    assert not [r for r in caplog.records if r.exc_info]
    assert not BounceEvent.objects.exists()


def test_a_failure_while_acting_undoes_everything_and_keeps_the_message_for_review(sent, caplog):
    """A database refusal that is not an outage (here a trigger): retrying would not help, so
    the message is taken, kept with the error, and nothing it began is left half done."""
    from django.db import connection

    campaign, readers = sent
    delivery = Delivery.objects.get(campaign=campaign, subscriber=readers[0])
    raw, to = report_for("postfix_hard", delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'refused for the test'; END; $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON newsletters_bounceevent "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse()"
        )
    outcome = services.report_receive(raw=raw, recipient=to)
    assert outcome == "error: not processed (ProgrammingError); kept for review"
    kept = InboundReport.objects.get()
    assert (kept.outcome, kept.size) == (outcome, len(raw))
    assert b"Final-Recipient" in bytes(kept.raw)
    reader = Subscriber.objects.get(pk=readers[0].pk)
    assert (reader.bounce_score, reader.last_bounce_on) == (0, None)
    assert Campaign.objects.get(pk=campaign.pk).bounces == 0
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [
        f"could not process a report to {to}"
    ]
    # The same bytes again are a duplicate of the kept one, not a second try.
    assert services.report_receive(raw=raw, recipient=to) == "duplicate"
