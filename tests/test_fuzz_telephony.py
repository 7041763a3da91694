"""Hypothesis over every form of the telephony app, through the test client.

A member's phone, PIN, call plan and price look-up; staff's rate deck upload (the form, the
file's name, and what the file holds, through the worker's import). The same properties as
tests/test_fuzz_panel.py: never a 500 or a traceback; a refused form answers 200 or 4xx with
the error at the field it names; nothing is saved.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from panel.models import Supplier
from telephony import decks, services
from telephony.models import AccessNumber, Carrier, DeckState, Trunk
from tests.test_fuzz_panel import (
    A_FILE,
    CHAR,
    CONTROLS,
    FUZZ,
    MISSING,
    NOT_A_DATE,
    NOT_A_NUMBER,
    NOT_AN_ID,
    PRINTABLE,
    UNICODE,
    assert_no_crash,
    assert_refused,
    corrupted,
    example,
    missing_or_blank,
    overlong,
    post,
    row_counts,
    upload,
    valid_or,
    with_inside,
)

DECK = b"prefix,destination,rate,increment,connect_fee\n49,Germany fixed,0.010000,60/60,0\n"


@pytest.fixture
def carrier(db) -> Carrier:
    supplier = Supplier.objects.create(name="Carrier One")
    carrier = Carrier.objects.create(name="Carrier One", supplier=supplier)
    Trunk.objects.create(
        carrier=carrier, name="carrier1", dial_template="PJSIP/{number}@carrier1", priority=1
    )
    return carrier


@pytest.fixture
def access(db) -> AccessNumber:
    return AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")


@pytest.fixture
def member(alice, access):
    """alice, with the call plan her first visit makes (a GET may make it; not a form's doing)."""
    services.plan_for(alice)
    return alice


# Not numbers in any country: letters, or digits no numbering plan has.
NOT_A_PHONE = st.one_of(
    st.text(st.characters(categories=["L"]), min_size=1, max_size=20),
    st.sampled_from(["+", "00", "+0", "+49", "+999 123", "0", "#31#", "*100#"]),
)


@FUZZ
@given(
    number=st.one_of(
        missing_or_blank(), overlong(30), with_inside(CONTROLS), NOT_A_PHONE, st.just("\x00")
    )
)
def test_phone_add(client, member, number):
    with example():
        client.force_login(member)
        before = row_counts()
        response = post(client, reverse("telephony:phone_add"), {"number": number})
        assert_refused(response, "number", before)


@settings(FUZZ, max_examples=30)
@given(number=st.text(st.sampled_from("+0123456789 ()/-.#*"), min_size=1, max_size=30))
def test_phone_add_any_digits(client, member, number):
    """Digits in any order: a phone added (and its code shown), or the field says why not."""
    with example():
        client.force_login(member)
        before = row_counts()
        response = post(client, reverse("telephony:phone_add"), {"number": number})
        assert_no_crash(response)
        if response.status_code != 302:
            assert_refused(response, "number", before)


@FUZZ
@given(
    pin=st.one_of(
        missing_or_blank(),
        st.text(st.sampled_from("0123456789"), max_size=3),
        st.text(st.sampled_from("0123456789"), min_size=9, max_size=40),
        # A PIN is keyed on a telephone: Arabic-Indic or fullwidth digits are none.
        st.sampled_from(
            ["١٢٣٤", "\uff11\uff12\uff13\uff14", "12a4", "12 34", "1234\x00", "+1234", "-1234"]
        ),
        with_inside(CONTROLS),
        st.text(PRINTABLE, min_size=1, max_size=12).filter(lambda s: not s.isascii()),
    )
)
def test_pin(client, member, pin):
    with example():
        client.force_login(member)
        before = row_counts()
        assert_refused(post(client, reverse("telephony:pin"), {"pin": pin}), "pin", before)


@FUZZ
@given(
    case=corrupted(
        valid={
            "per_call_cap": valid_or("2.00"),
            "allowed_classes": st.sampled_from([MISSING, "fixed", "mobile", "toll_free"]),
        },
        invalid={
            "per_call_cap": st.one_of(
                missing_or_blank(),
                NOT_A_NUMBER,
                st.sampled_from(["0", "-1", "100.01", "1.001", "1e3", str(10**30)]),
            ),
            "allowed_classes": st.one_of(
                st.sampled_from(["premium", "shared_cost", "FIXED", ""]),
                st.text(CHAR, min_size=1, max_size=12).filter(
                    lambda s: s not in ("fixed", "mobile", "toll_free", "other")
                ),
            ),
        },
    )
)
def test_plan(client, member, case):
    field, data = case
    with example():
        client.force_login(member)
        before = row_counts()
        assert_refused(post(client, reverse("telephony:plan"), data), field, before)


@FUZZ
@given(number=st.one_of(overlong(30), with_inside(CONTROLS), NOT_A_PHONE, st.just("\x00")))
def test_quote(client, member, carrier, number):
    """The price look-up reads the query string: an answer with the error at the number."""
    with example():
        client.force_login(member)
        before = row_counts()
        response = client.get(reverse("telephony:index"), {"number": number})
        assert_refused(response, "number", before)


@FUZZ
@given(data=st.data())
def test_deck_upload_form(client, carol, carrier, data):
    field, form = data.draw(
        corrupted(
            valid={
                "carrier": st.just(str(carrier.pk)),
                "file": st.just(upload(DECK, "deck.csv")),
                "read_as": st.sampled_from(["", *(f"preset:{k}" for k in decks.PRESETS)]),
                "effective_from": valid_or("2026-10-01T00:00"),
            },
            invalid={
                "carrier": st.one_of(missing_or_blank(), NOT_AN_ID),
                "file": st.one_of(st.just(MISSING), UNICODE, st.builds(upload, st.just(b""))),
                "read_as": st.text(CHAR, min_size=1, max_size=12).filter(
                    lambda s: s.strip() and s not in {f"preset:{k}" for k in decks.PRESETS}
                ),
                "effective_from": st.one_of(missing_or_blank(), NOT_A_DATE),
            },
        )
    )
    if isinstance(form.get("file"), type(upload())):
        form["file"].seek(0)
    with example():
        client.force_login(carol)
        before = row_counts()
        assert_refused(post(client, reverse("telephony:staff_decks"), form), field, before)


@settings(FUZZ, max_examples=15)
@given(name=st.text(CHAR, min_size=1, max_size=300))
def test_deck_file_name(client, carol, carrier, name):
    with example():
        client.force_login(carol)
        form = {
            "carrier": str(carrier.pk),
            "file": upload(DECK, name),
            "read_as": "preset:standard",
            "effective_from": "2026-10-01T00:00",
        }
        response = post(client, reverse("telephony:staff_decks"), form)
        assert_no_crash(response)
        assert response.status_code in (200, 302, 422)


@pytest.mark.parametrize("when", ["0001-01-01T00:00", "0026-10-01T00:00", "9999-12-31T23:59"])
def test_deck_in_force_from_a_year_of_typos(client, carol, carrier, when):
    """Found by the fuzz test: a deck in force from year 1 (Berlin's 00:00 is 0000-12-31 in
    UTC, which Python cannot read back) makes the staff deck page a 500 for good."""
    client.force_login(carol)
    form = {
        "carrier": str(carrier.pk),
        "file": upload(DECK, "deck.csv"),
        "read_as": "preset:standard",
        "effective_from": when,
    }
    before = row_counts()
    response = post(client, reverse("telephony:staff_decks"), form)
    assert client.get(reverse("telephony:staff_decks")).status_code == 200
    assert_refused(response, "effective_from", before)


DECK_CELL = st.one_of(
    UNICODE,
    st.sampled_from(["49", "4930", "0.01", "60/60", "1/1", "0", "-1", "NaN", "1e9", "", '"']),
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["prefix", "destination", "rate", "increment", "connect_fee", "x", ""]),
        max_size=6,
    ),
    rows=st.lists(st.lists(DECK_CELL, max_size=6), max_size=6),
    delimiter=st.sampled_from([",", ";", "\t"]),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_deck_content_never_crashes_the_import(carol, carrier, header, rows, delimiter, raw):
    """Whatever the file holds: the import ends, failed with its lines named, or done."""
    text = "\n".join(delimiter.join(line) for line in [header, *rows])
    content = raw if raw is not None else text.encode()
    with example():
        try:
            deck = services.deck_upload(
                carrier=carrier,
                actor=carol,
                filename="deck.csv",
                content=content,
                mapping=services.PRESETS["standard"],
                effective_from=timezone.now() - timedelta(days=1),
            )
        except decks.DeckError as exc:  # refused at the upload: an empty file
            refusal = exc.errors
            assert refusal
            return
        result = services.deck_import(deck_id=deck.pk)
        assert result.state in (DeckState.FAILED, DeckState.READY), result.state
        if result.state == DeckState.FAILED:
            assert result.errors


TELEPHONY_FORMS = [
    ("telephony:phone_add", "alice"),
    ("telephony:pin", "alice"),
    ("telephony:pin_unlock", "alice"),
    ("telephony:plan", "alice"),
    ("telephony:staff_decks", "carol"),
]
KEYS = st.sampled_from(
    ["number", "pin", "per_call_cap", "allowed_classes", "carrier", "file", "read_as",
     "effective_from"]
)  # fmt: skip
ANY_VALUE = st.one_of(UNICODE, CONTROLS, overlong(60), NOT_A_NUMBER, A_FILE)


@settings(FUZZ, max_examples=30)
@given(
    page=st.sampled_from(TELEPHONY_FORMS),
    form=st.dictionaries(KEYS, ANY_VALUE, max_size=6),
    as_json=st.booleans(),
)
def test_any_input_to_any_form_is_answered(client, member, carol, carrier, page, form, as_json):
    name, who = page
    with example():
        client.force_login(member if who == "alice" else carol)
        before = row_counts()
        if as_json:
            body = json.dumps({k: v for k, v in form.items() if isinstance(v, str)})
            response = client.post(reverse(name), body, content_type="application/json")
        else:
            response = post(client, reverse(name), form)
        assert_no_crash(response)
        if response.status_code != 302:
            assert row_counts() == before, name
