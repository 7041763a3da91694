"""The rates of the decks in force, held in memory by the FastAGI server.

Every call setup looks up the longest prefix of the number dialled. Asked of the database
that is a round trip the caller waits for (0.4 ms of a 3 ms call setup, measured); asked of a
dict it takes microseconds. Softswitches do the same (Kamailio's mtree and carrierroute
modules load their prefix trees into memory).

It is right because a deck's rates never change once it is imported: the import inserts
them in the transaction that marks the deck ready, and the database refuses any UPDATE of a
rate (migration 0003). A new price list is a new deck, with a table of its own. Only the
server process keeps tables (about 40 MB for 200,000 prefixes); web workers ask the
database, which is what ``services.rate_for`` does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.db import connection

from telephony import rating
from telephony.models import Rate, RateDeck
from telephony.services import rate_for, routes

log = logging.getLogger(__name__)

# What call setup needs of a rate, in this order; the description is left deferred.
FIELDS = ["id", "deck_id", "prefix", "per_minute", "connect_fee", "initial_seconds"]
FIELDS += ["increment_seconds", "free_seconds"]
Row = tuple[int, Decimal, Decimal, int, int, int]
# A prefix with rates that begin later than their deck: (epoch seconds from, row), latest
# first; its rate of the deck's own date, if any, last with -inf.
Dated = list[tuple[float, Row]]


class RateCache:
    """Longest-prefix lookups in memory; the database answers until a deck's table is loaded.

    A deck seen for the first time is loaded on a thread of its own (a second or so for
    200,000 rates), so no caller waits for the load; ``run`` runs the load's query (the
    server lends it one of its database connections). A load that failed is tried again
    after ``RETRY_S``, not on every call. Tables of decks no longer in force are dropped
    when a new one is loaded.
    """

    RETRY_S = 30.0

    def __init__(self, run: Callable[..., Any]) -> None:
        self._run = run
        self._tables: dict[int, dict[str, Row | Dated]] = {}
        self._loading: set[int] = set()
        self._failed_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def lookup(self, deck: RateDeck, e164: str) -> Rate | None:
        """The longest prefix of ``e164`` in ``deck``, as ``services.rate_for`` finds it."""
        table = self._tables.get(deck.pk)
        if table is None:
            self.load_later([deck.pk])
            return rate_for(deck, e164)
        for prefix in rating.prefixes(e164):
            found = table.get(prefix)
            if found is None:
                continue
            if type(found) is list:
                now = time.time()
                found = next((row for since, row in found if since <= now), None)
                if found is None:
                    continue  # not in force yet: a shorter prefix applies
            rate_id, per_minute, connect_fee, initial, increment, free = found
            return Rate.from_db(
                connection.alias,
                FIELDS,
                [rate_id, deck.pk, prefix, per_minute, connect_fee, initial, increment, free],
            )
        return None

    def loaded(self, deck_id: int) -> bool:
        return deck_id in self._tables

    def load_later(self, deck_ids: list[int]) -> list[threading.Thread]:
        """Load the tables of these decks, each on a thread of its own; returns the threads."""
        threads = []
        now = time.monotonic()
        with self._lock:
            for deck_id in deck_ids:
                if deck_id in self._tables or deck_id in self._loading:
                    continue
                if now - self._failed_at.get(deck_id, -self.RETRY_S) < self.RETRY_S:
                    continue
                self._loading.add(deck_id)
                thread = threading.Thread(
                    target=self._load, args=(deck_id,), name=f"rates-{deck_id}", daemon=True
                )
                threads.append(thread)
        for thread in threads:
            thread.start()
        return threads

    def _load(self, deck_id: int) -> None:
        try:
            table = self._run(load_table, deck_id)
            in_force = {deck.pk for _trunk, deck in self._run(routes) if deck is not None}
            with self._lock:
                self._tables = {
                    **{k: v for k, v in self._tables.items() if k in in_force},
                    deck_id: table,
                }
            log.info("rates of deck %s in memory: %d prefixes", deck_id, len(table))
        except Exception:
            log.exception("loading the rates of deck %s", deck_id)
            with self._lock:
                self._failed_at[deck_id] = time.monotonic()
        finally:
            with self._lock:
                self._loading.discard(deck_id)


def load_table(deck_id: int) -> dict[str, Row | Dated]:
    """All rates of a deck by prefix. Equal amounts share one Decimal (most rates repeat).

    A prefix with dated rates holds them all, latest first, for the lookup to choose by the
    time of the call.
    """
    shared: dict[Any, Any] = {}
    table: dict[str, Row | Dated] = {}
    dated: dict[str, Dated] = {}
    rows = Rate.objects.filter(deck_id=deck_id).values_list(
        "prefix",
        "id",
        "per_minute",
        "connect_fee",
        "initial_seconds",
        "increment_seconds",
        "free_seconds",
        "effective_from",
    )
    for prefix, rate_id, per_minute, connect_fee, initial, increment, free, since in rows.iterator(
        chunk_size=20_000
    ):
        row = (
            rate_id,
            shared.setdefault(per_minute, per_minute),
            shared.setdefault(connect_fee, connect_fee),
            initial,
            increment,
            free,
        )
        if since is None:
            table[prefix] = row
        else:
            dated.setdefault(prefix, []).append((since.timestamp(), row))
    for prefix, rates in dated.items():
        undated = table.get(prefix)
        rates.sort(key=lambda r: -r[0])
        if undated is not None:
            rates.append((float("-inf"), undated))  # type: ignore[arg-type]
        table[prefix] = rates
    return table
