from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from panel.models import AuditEntry
from telephony import rating, services
from telephony.models import DeckState, Rate, RateDeck


def upload(carrier, carol, content: bytes, preset: str = "standard") -> RateDeck:
    deck = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="deck.csv",
        content=content,
        mapping=services.PRESETS[preset],
        effective_from=timezone.now() + timedelta(days=1),
    )
    return services.deck_import(deck_id=deck.pk)


def test_bad_rows_reject_the_whole_deck_with_line_numbers(carrier, carol):
    content = (
        b"prefix,destination,rate,increment,connect_fee\n"
        b"49,Germany,0.01,60/60,0\n"
        b"4x9,Oops,0.01,60/60,0\n"
        b"33,France,cheap,60/60,0\n"
        b"34,Spain,0.01,sixty,0\n"
        b"49,Germany again,0.02,60/60,0\n"
        b"35,Portugal,0.0000001,60/60,0\n"
        b"36,Hungary,0.01,60/0,0\n"
    )
    deck = upload(carrier, carol, content)
    assert deck.state == DeckState.FAILED
    assert deck.errors == [
        "line 3: prefix '4x9' is not 1 to 15 digits of an international number",
        "line 4: rate 'cheap' is not a number",
        "line 5: increment 'sixty' is not like 60/60",
        "line 6: prefix 49 appears again (first on line 2)",
        "line 7: rate '0.0000001' has more than 6 decimal places",
        "line 8: increment 0: choose 'increment 0 means per second' if the carrier means that",
    ]
    assert not Rate.objects.filter(deck=deck).exists()


def test_a2billing_layout(carrier, carol):
    content = (
        b"dialprefix;destination;rateinitial;initblock;billingblock;connectcharge\n"
        b"4930;Berlin;0,0075;30;6;0,02\n"
    )
    deck = upload(carrier, carol, content, preset="a2billing")
    assert deck.state == DeckState.READY
    rate = Rate.objects.get(deck=deck)
    assert (
        rate.prefix,
        str(rate.per_minute),
        rate.initial_seconds,
        rate.increment_seconds,
        str(rate.connect_fee),
    ) == (
        "4930",
        "0.007500",
        30,
        6,
        "0.020000",
    )


@pytest.mark.django_db(transaction=True)
def test_two_hundred_thousand_rows_in_ten_seconds(carrier, carol):
    lines = [b"prefix,destination,rate,increment,connect_fee"]
    lines += [
        b"%d,Destination %d,0.%06d,60/60,0" % (1000000 + n, n, n % 999999) for n in range(200_000)
    ]
    began = time.perf_counter()
    deck = upload(carrier, carol, b"\n".join(lines) + b"\n")
    seconds = time.perf_counter() - began
    assert deck.state == DeckState.READY
    assert Rate.objects.filter(deck=deck).count() == 200_000
    assert seconds <= 10, f"{seconds:.1f}s"


def test_the_longest_prefix_is_found_through_the_index_after_an_import(carrier, carol):
    """Without statistics the planner filtered every rate of the new deck on each call."""
    rows = [b"prefix,destination,rate,increment,connect_fee"]
    rows += [b"%d,Berlin %d,0.01,60/60,0" % (4930000 + n, n) for n in range(20_000)]
    deck = upload(carrier, carol, b"\n".join(rows) + b"\n")
    assert deck.state == DeckState.READY
    keys = rating.prefixes("+49301234567")
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + services._rate_for_sql(),
            [deck.pk, *keys, *keys[-1:] * (15 - len(keys)), timezone.now()],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "rate_deck_prefix" in plan, plan
    found = services.rate_for(deck, "+49301234567")
    assert found is not None
    assert found.prefix == "4930123"


def test_descriptions_with_tabs_backslashes_and_line_breaks_are_stored_as_written(carrier, carol):
    """The rows go to PostgreSQL in COPY's text format, where these characters are special."""
    content = (
        b"prefix,destination,rate,increment,connect_fee\n"
        b'49,"Tab\there, back\\slash \\N",0.01,60/60,0\n'
        b'33,"Two\nlines\r\nand ""quotes""",0.02,60/60,0\n'
    )
    deck = upload(carrier, carol, content)
    assert deck.state == DeckState.READY, deck.errors
    stored = dict(Rate.objects.filter(deck=deck).values_list("prefix", "description"))
    assert stored == {"49": "Tab\there, back\\slash \\N", "33": 'Two\nlines\r\nand "quotes"'}


# Never stuck "importing" (issue 15, item 4) ------------------------------------------------

DECK_HEADER = b"prefix,destination,rate,increment,connect_fee"


def test_line_endings_of_cr_alone_are_lines(carrier, carol):
    """Exports from old Macs end lines with CR only: the csv module raised, uncaught, and the
    deck stayed "importing" for good."""
    content = b"\r".join([DECK_HEADER, b"49,Germany,0.01,60/60,0", b"33,France,0.02,60/60,0"])
    deck = upload(carrier, carol, content + b"\r")
    assert deck.state == DeckState.READY, deck.errors
    assert Rate.objects.filter(deck=deck).count() == 2


def test_a_stray_quote_fails_the_deck_with_the_line_it_opened_on(carrier, carol):
    rows = [b"%d,Place %d,0.01,60/60,0" % (4900 + n, n) for n in range(10)]
    rows[3] = b'4903,"Place 3 with a stray quote,0.01,60/60,0'
    deck = upload(carrier, carol, b"\n".join([DECK_HEADER, *rows]) + b"\n")
    assert deck.state == DeckState.FAILED
    assert len(deck.errors) == 1
    assert deck.errors[0].startswith("line 5: "), deck.errors
    assert "quote" in deck.errors[0]
    assert not Rate.objects.filter(deck=deck).exists()


def test_a_stray_quote_in_a_large_deck_is_named_too(carrier, carol):
    """Past the csv module's field size limit its own error came out instead."""
    rows = [b"%d,Place %d,0.01,60/60,0" % (4900000 + n, n) for n in range(20_000)]
    rows[1] = b'4900001,"Place 1,0.01,60/60,0'
    deck = upload(carrier, carol, b"\n".join([DECK_HEADER, *rows]) + b"\n")
    assert deck.state == DeckState.FAILED
    assert deck.errors == [
        "line 3: field larger than field limit (131072) (is a quote opened here and never closed?)"
    ]


def test_an_unforeseen_failure_fails_the_deck_and_a_retry_imports_it(
    client, carrier, carol, django_capture_on_commit_callbacks
):
    """Anything else that goes wrong (here the database refuses the rates) ends the import as
    failed with what it was; the file is kept, and "Import again" imports it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'refused for the test'; END; $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON telephony_rate "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse()"
        )
    deck = upload(carrier, carol, DECK_HEADER + b"\n49,Germany,0.01,60/60,0\n")
    assert deck.state == DeckState.FAILED
    assert deck.errors[0].startswith("the import failed (")
    assert "refused for the test" in deck.errors[0]
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse ON telephony_rate")
    client.force_login(carol)
    page = client.get(reverse("telephony:staff_decks")).content.decode()
    retry = reverse("telephony:staff_deck_retry", args=[deck.pk])
    assert f'action="{retry}"' in page
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(retry).status_code == 302
    deck.refresh_from_db()
    assert deck.state == DeckState.READY, deck.errors
    assert Rate.objects.filter(deck=deck).count() == 1
    entry = AuditEntry.objects.get(action="rate_deck.retried")
    assert (entry.actor, entry.before, entry.after) == (
        carol,
        {"state": "failed"},
        {"state": "importing"},
    )
    # A ready deck is not imported again.
    client.post(retry)
    assert AuditEntry.objects.filter(action="rate_deck.retried").count() == 1


def test_an_import_whose_worker_stopped_is_failed_by_the_beat_job_and_can_be_retried(
    carrier, carol, settings, django_capture_on_commit_callbacks
):
    from panel.celery import app

    entry = next(
        e for e in app.conf.beat_schedule.values() if e["task"].endswith("fail_stale_deck_imports")
    )
    settings.TELEPHONY_DECK_IMPORT_TIMEOUT_MINUTES = 30
    content = DECK_HEADER + b"\n49,Germany,0.01,60/60,0\n"
    # Uploaded, never imported: the worker that took it was killed.
    stale, fresh = (
        services.deck_upload(
            carrier=carrier,
            actor=carol,
            filename=name,
            content=content,
            mapping=services.PRESETS["standard"],
            effective_from=timezone.now() + timedelta(days=1),
        )
        for name in ("stale.csv", "fresh.csv")
    )
    RateDeck.objects.filter(pk=stale.pk).update(queued_at=timezone.now() - timedelta(minutes=31))
    assert app.tasks[entry["task"]].apply().get() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.state == DeckState.FAILED
    assert stale.errors == [
        "the import did not finish within 30 minutes (its worker stopped?); retry it"
    ]
    assert fresh.state == DeckState.IMPORTING
    assert AuditEntry.objects.filter(action="rate_deck.import_timed_out").count() == 1
    assert app.tasks[entry["task"]].apply().get() == 0
    with django_capture_on_commit_callbacks(execute=True):
        services.deck_retry(deck_id=stale.pk, actor=carol)
    stale.refresh_from_db()
    assert stale.state == DeckState.READY
    # A late delivery of the stopped worker's message finds the deck done and does nothing.
    assert services.deck_import(deck_id=stale.pk).state == DeckState.READY
    assert Rate.objects.filter(deck=stale).count() == 1
