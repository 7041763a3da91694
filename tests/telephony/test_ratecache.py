"""The FastAGI server's rate tables in memory give the answers the database gives."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony import services
from telephony.models import Carrier, Rate, RateDeck
from telephony.ratecache import RateCache


def run_and_close(function: Any, *args: Any, **kwargs: Any) -> Any:
    """What the server's Database.run does, for a loader thread of a test."""
    try:
        return function(*args, **kwargs)
    finally:
        connection.close()


@pytest.fixture
def loaded(transactional_db: None, carrier: Carrier) -> tuple[RateCache, RateDeck]:
    deck = services.deck_in_force(carrier)
    assert deck is not None
    cache = RateCache(run_and_close)
    for thread in cache.load_later([deck.pk]):
        thread.join(30)
    assert cache.loaded(deck.pk)
    return cache, deck


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=15))
def test_the_table_finds_the_prefix_the_database_finds(loaded, digits):
    cache, deck = loaded
    e164 = f"+{digits}"
    from_db = services.rate_for(deck, e164)
    from_memory = cache.lookup(deck, e164)
    if from_db is None:
        assert from_memory is None
        return
    assert from_memory is not None
    fields = ["pk", "deck_id", "prefix", "per_minute", "connect_fee"]
    fields += ["initial_seconds", "increment_seconds"]
    assert [getattr(from_memory, f) for f in fields] == [getattr(from_db, f) for f in fields]


def test_the_database_answers_until_the_table_is_loaded(transactional_db, carrier):
    deck = services.deck_in_force(carrier)
    assert deck is not None

    tried: list[int] = []

    def never(function: Any, *args: Any) -> Any:  # the load never gets through
        tried.append(1)
        raise DatabaseError("not now")

    cache = RateCache(never)
    for _ in range(3):
        rate = cache.lookup(deck, "+4930123456")
        assert rate is not None
        assert rate.prefix == "4930"
        time.sleep(0.05)  # the loader thread fails at once
    assert not cache.loaded(deck.pk)
    assert len(tried) == 1  # a failed load waits RETRY_S before the next try


def test_a_new_deck_gets_its_own_table_and_the_old_one_goes(loaded, carrier, carol):
    cache, old = loaded
    newer = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="v2.csv",
        content=b"prefix,destination,rate,increment,connect_fee\n4930,Berlin,0.5,60/60,0\n",
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(minutes=1),
    )
    services.deck_import(deck_id=newer.pk)
    services.forget_routes()
    for thread in cache.load_later([newer.pk]):
        thread.join(30)
    assert cache.loaded(newer.pk)
    assert not cache.loaded(old.pk)  # no longer in force
    rate = cache.lookup(newer, "+4930123456")
    assert rate is not None
    assert str(rate.per_minute) == "0.500000"


@pytest.mark.django_db
def test_the_database_refuses_to_change_a_rate(carrier):
    """The tables rely on it: a rate never changes once its deck is imported."""
    rate = Rate.objects.filter(deck__carrier=carrier).first()
    assert rate is not None
    with pytest.raises(DatabaseError, match="rates are never changed"), transaction.atomic():
        Rate.objects.filter(pk=rate.pk).update(per_minute=0)
