"""Double opt-in with a consent record, and unsubscribing without a login (RFC 8058)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from newsletters import services, tokens
from newsletters.models import ConsentEvent, Subscriber, SubscriberStatus
from panel.models import UsageEvent
from tests.conftest import text_and_html
from tests.newsletters.fixtures import add_confirmed, dkim_valid

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"


def signup(client, mlist, email, name="", **extra):
    return client.post(
        reverse("newsletters:signup", args=[mlist.slug]),
        {"email": email, "name": name, "website": "", **extra},
        HTTP_USER_AGENT=BROWSER,
        REMOTE_ADDR="192.0.2.10",
    )


def test_signup_confirmation_email_and_confirm_link_record_consent(
    client, alice_list, alice_domain, sink, mail_rate, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = signup(client, alice_list, " Dana@Example.NET ", "Dana")
    assert response.status_code == 200
    assert "Check your inbox" in response.content.decode()
    dana = Subscriber.objects.get(list=alice_list)
    assert (dana.email, dana.name, dana.status) == ("dana@example.net", "Dana", "pending")
    subscribed = ConsentEvent.objects.get(subscriber=dana)
    assert subscribed.kind == "subscribe"
    assert (subscribed.ip, subscribed.user_agent) == ("192.0.2.10", BROWSER)
    assert subscribed.source == "signup form /newsletters/l/garden-notes/"

    # The confirmation comes from the list's address, signed with alice's key.
    _sender, rcpt, raw = sink.envelopes[0]
    assert rcpt == ["dana@example.net"]
    assert dkim_valid(raw, alice_domain)
    message = sink.messages[0]
    assert "Confirm your subscription to Garden notes" in message["Subject"]
    assert "garden@alice-news.example" in message["From"]
    text, html = text_and_html(message)
    found = re.search(r"http://testserver(/newsletters/confirm/\S+/)", text)
    assert found
    link = found.group(1)
    assert link in html
    assert UsageEvent.objects.filter(service="newsletters", source_key__startswith="confirm:")

    # Following the link shows a button (link scanners confirm nothing); pressing it confirms.
    other = Client()
    assert "Confirm my subscription" in other.get(link).content.decode()
    assert Subscriber.objects.get(pk=dana.pk).status == "pending"
    done = other.post(link, HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="198.51.100.7")
    assert "is subscribed" in done.content.decode()
    dana.refresh_from_db()
    assert dana.status == "confirmed"
    assert dana.confirmed_at is not None
    confirm = ConsentEvent.objects.filter(subscriber=dana, kind="confirm").get()
    assert confirm.ip == "198.51.100.7"
    # A second press changes nothing.
    other.post(link)
    assert ConsentEvent.objects.filter(subscriber=dana).count() == 2


def test_the_form_does_not_tell_who_is_subscribed_and_mails_nobody_twice(
    client, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    known = add_confirmed(alice_list, 1)[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = signup(client, alice_list, known.email)
    assert "Check your inbox" in response.content.decode()
    assert sink.envelopes == []
    assert ConsentEvent.objects.filter(subscriber=known).count() == 2  # from the fixture


def test_the_honeypot_catches_bots_silently(client, alice_list, sink):
    response = signup(client, alice_list, "bot@example.org", website="http://spam.example")
    assert "Check your inbox" in response.content.decode()
    assert not Subscriber.objects.exists()


def test_signups_are_rate_limited_per_address_and_per_ip(
    client, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            assert signup(client, alice_list, "same@example.org").status_code == 200
        limited = signup(client, alice_list, "same@example.org")
    assert limited.status_code == 429
    assert "Too many signups" in limited.content.decode()
    assert len(sink.envelopes) == 3
    for n in range(7):
        signup(client, alice_list, f"person{n}@example.org")
    assert signup(client, alice_list, "one.more@example.org").status_code == 429


@pytest.mark.parametrize("email", ["no-at-sign", "a@b", "x@-example.org", "two@@example.org"])
def test_invalid_addresses_are_refused_on_the_form(client, alice_list, email):
    response = signup(client, alice_list, email)
    assert response.status_code == 422
    assert "is not a valid email address" in response.content.decode()
    assert not Subscriber.objects.exists()


def test_a_closed_signup_page_is_not_there(client, alice_list):
    alice_list.signup_open = False
    alice_list.save()
    assert client.get(reverse("newsletters:signup", args=[alice_list.slug])).status_code == 404


def test_a_bad_or_expired_confirm_link_says_so(client, alice_list):
    response = client.get(reverse("newsletters:confirm", args=["forged:token"]))
    assert response.status_code == 400
    assert "not valid" in response.content.decode()


# Unsubscribe ------------------------------------------------------------------------------


def test_rfc8058_one_click_post_unsubscribes_without_session_or_csrf(alice_list):
    reader = add_confirmed(alice_list, 1)[0]
    url = reverse("newsletters:unsubscribe", args=[tokens.unsubscribe_token(reader.pk, 0)])
    # What a mailbox provider sends: a bare POST, no cookies, no CSRF token.
    provider = Client(enforce_csrf_checks=True)
    response = provider.post(
        url,
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
        HTTP_USER_AGENT="GoogleOneClick/1.0",
    )
    assert response.status_code == 200
    reader.refresh_from_db()
    assert reader.status == SubscriberStatus.UNSUBSCRIBED
    event = ConsentEvent.objects.filter(subscriber=reader, kind="unsubscribe").get()
    assert event.source == "one-click unsubscribe (RFC 8058)"
    assert event.user_agent == "GoogleOneClick/1.0"
    # Providers retry; the second POST is harmless.
    assert provider.post(url, {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert ConsentEvent.objects.filter(subscriber=reader, kind="unsubscribe").count() == 1


def test_the_unsubscribe_page_asks_then_confirms(alice_list):
    reader = add_confirmed(alice_list, 1)[0]
    url = reverse("newsletters:unsubscribe", args=[tokens.unsubscribe_token(reader.pk, 0)])
    visitor = Client(enforce_csrf_checks=True)
    page = visitor.get(url).content.decode()
    assert "Stop sending Garden notes to reader0@example.net?" in page
    assert Subscriber.objects.get(pk=reader.pk).status == "confirmed"
    done = visitor.post(url).content.decode()
    assert "gets no more mail from Garden notes" in done
    assert ConsentEvent.objects.get(subscriber=reader, kind="unsubscribe").source == (
        "unsubscribe page"
    )


def test_a_forged_unsubscribe_token_does_nothing(client, alice_list):
    reader = add_confirmed(alice_list, 1)[0]
    real = tokens.unsubscribe_token(reader.pk, 0)
    forged = f"{reader.pk}.0.{'a' * 16}"
    assert forged != real
    response = client.post(reverse("newsletters:unsubscribe", args=[forged]))
    assert response.status_code == 400
    assert Subscriber.objects.get(pk=reader.pk).status == "confirmed"


def test_the_mailto_unsubscribe_arrives_as_mail(alice_list):
    reader = add_confirmed(alice_list, 1)[0]
    address = tokens.unsubscribe_mailto(tokens.unsubscribe_token(reader.pk, 7))
    raw = (
        f"From: reader0@example.net\r\nTo: {address}\r\nSubject: unsubscribe\r\n\r\n\r\n"
    ).encode()
    outcome = services.report_receive(raw=raw, recipient=address)
    assert outcome.startswith("unsubscribe: subscriber")
    reader.refresh_from_db()
    assert reader.status == "unsubscribed"
    assert ConsentEvent.objects.get(subscriber=reader, kind="unsubscribe").source == (
        "mailto unsubscribe"
    )
    assert services.report_receive(raw=raw, recipient=address) == "duplicate"


def test_consent_events_cannot_be_changed_or_deleted(alice_list):
    from django.db import IntegrityError, InternalError, transaction

    reader = add_confirmed(alice_list, 1)[0]
    event = ConsentEvent.objects.filter(subscriber=reader).order_by("id")[0]
    for attempt in (
        lambda: ConsentEvent.objects.filter(pk=event.pk).update(source="edited"),
        lambda: ConsentEvent.objects.filter(pk=event.pk).delete(),
    ):
        with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
            attempt()
    assert ConsentEvent.objects.get(pk=event.pk).source == "test fixture"


def test_the_list_owner_can_remove_an_address_and_it_is_audited(client, alice, alice_list):
    from panel.models import AuditEntry

    reader = add_confirmed(alice_list, 1)[0]
    client.force_login(alice)
    client.post(reverse("newsletters:subscriber_remove", args=[alice_list.pk, reader.pk]))
    reader.refresh_from_db()
    assert reader.status == "unsubscribed"
    event = ConsentEvent.objects.get(subscriber=reader, kind="unsubscribe")
    assert event.source == f"removed by the list owner ({alice.email})"
    entry = AuditEntry.objects.get(action="newsletters.subscriber_removed")
    assert (entry.before, entry.after) == ({"status": "confirmed"}, {"status": "unsubscribed"})
