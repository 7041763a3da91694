from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

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
        "line 8: increment 0 is out of range",
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
            "EXPLAIN " + services._rate_for_sql(), [deck.pk, *keys, *keys[-1:] * (15 - len(keys))]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "rate_prefix_unique" in plan, plan
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
