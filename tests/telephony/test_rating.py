"""Hypothesis: the rating formulas, prefixes and deck versions."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony import rating, services
from telephony.models import CallRecord

rules = st.sampled_from([(60, 60), (30, 6), (1, 1), (60, 1), (6, 6), (0, 60)])
seconds = st.decimals(min_value=0, max_value=20000, places=3, allow_nan=False, allow_infinity=False)
per_minute = st.decimals(min_value=0, max_value=5, places=6, allow_nan=False, allow_infinity=False)


@given(rule=rules, connected=seconds)
def test_billed_seconds_follow_the_formula(rule, connected):
    initial, increment = rule
    billed = rating.billed_seconds(
        answered=True, connected=connected, initial=initial, increment=increment
    )
    expected = initial + max(0, math.ceil((connected - initial) / increment)) * increment
    assert billed == expected
    assert billed >= connected
    assert billed - max(connected, initial) < increment


@given(rule=rules, connected=seconds, price=per_minute)
def test_unanswered_calls_cost_nothing(rule, connected, price):
    billed = rating.billed_seconds(
        answered=False, connected=connected, initial=rule[0], increment=rule[1]
    )
    assert billed == 0
    assert rating.cost(billed=billed, per_minute=price, connect_fee=Decimal("0.05")) == 0


@given(rule=rules, price=per_minute, hold=st.decimals(min_value=0, max_value=50, places=2))
def test_the_limit_never_costs_more_than_the_hold(rule, price, hold):
    initial, increment = rule
    limit = rating.affordable_seconds(
        hold=hold, per_minute=price, connect_fee=Decimal(0), initial=initial, increment=increment
    )
    if limit:
        assert rating.cost(billed=limit, per_minute=price, connect_fee=Decimal(0)) <= hold
        assert (
            limit
            == rating.billed_seconds(
                answered=True, connected=Decimal(limit), initial=initial, increment=increment
            )
            or limit == rating.MAX_CALL_SECONDS
        )


@given(number=st.from_regex(r"\A[1-9][0-9]{6,14}\Z"))
def test_prefixes_are_longest_first(number):
    found = rating.prefixes("+" + number)
    assert found[0] == number[:15]
    assert [len(p) for p in found] == sorted((len(p) for p in found), reverse=True)


@pytest.mark.django_db
def test_longest_prefix_wins(carrier):
    deck = services.deck_in_force(carrier)
    assert deck is not None

    def prefix(number: str) -> str | None:
        rate = services.rate_for(deck, number)
        return rate.prefix if rate else None

    assert prefix("+4930123456") == "4930"
    assert prefix("+4915123456789") == "4915"
    assert prefix("+4940123456") == "49"
    assert prefix("+33123456789") is None


@pytest.mark.django_db
def test_a_later_deck_does_not_change_an_earlier_calls_cost(carrier, carol, alice, access, caller):
    earlier = services.call_authorize(
        uniqueid="old", member=alice, caller=caller.number, access_number=access, digits="030123456"
    )
    deck = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="v2.csv",
        content=b"prefix,destination,rate,increment,connect_fee\n4930,Berlin,0.500000,60/60,0.10\n",
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(seconds=1),
    )
    services.deck_import(deck_id=deck.pk)
    in_force = services.deck_in_force(carrier)
    assert in_force is not None
    assert in_force.version == 2
    settled = services.call_settle(
        uniqueid="old", dial_status="ANSWER", answered_at=Decimal(100), ended_at=Decimal(160)
    )
    assert settled.cost == Decimal("0.008000")  # 60 s at v1's 0.008/min, 1/1
    assert CallRecord.objects.get(uniqueid="old").deck_id == earlier.call.deck_id  # type: ignore[union-attr]
    later = services.call_authorize(
        uniqueid="new", member=alice, caller=caller.number, access_number=access, digits="030123456"
    )
    assert later.call is not None
    assert earlier.call is not None
    assert later.call.per_minute == Decimal("0.500000")
    assert earlier.call.per_minute == Decimal("0.008000")


@settings(deadline=None)
@given(digits=st.text(alphabet="0123456789*#", min_size=0, max_size=25))
def test_normalize_accepts_only_real_numbers(digits):
    try:
        number = rating.normalize(digits, "DE")
    except rating.NotANumber:
        return
    assert rating.e164(number).startswith("+")
