"""Who a caller ID is, kept by the FastAGI server from one call to the next.

Every call setup starts by identifying the caller: the verified phone, its member, the
membership and the call plan. Asked of the database that is a round trip before the first
prompt (a fifth of a call setup, measured), for an answer that changes about never. So the
server keeps the answers for verified phones of members in good standing, and forgets all of
them whenever any phone, membership or call plan changes: a trigger on those tables sends a
PostgreSQL NOTIFY (migration 0005), and a thread of the server LISTENs on a connection of its
own. While that thread is not listening (starting, reconnecting, SQLite), nothing is kept and
every call asks the database, as before.

A change is seen by calls that start after its notification arrives, a millisecond or so after
its commit. That is no new staleness: the identity was always read when a call starts, and
the credit is held seconds later, after the caller has keyed in a number; the hold itself is
always decided by the database. An answer is kept for ``MAX_AGE_S`` at most all the same: a
listening connection that died without a word (a network that drops packets instead of
refusing them) would otherwise keep a removed phone calling until the server restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from panel.models import MembershipStatus
from telephony.models import CallPlan, Phone

log = logging.getLogger(__name__)

CHANNEL = "telephony_callers"
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class CallerCache:
    """Identified callers in memory, forgotten on every NOTIFY of ``CHANNEL``.

    ``generation`` counts the times everything was forgotten: an answer read from the
    database is kept only if no change arrived since the read began (``fill`` takes the
    generation from before the read), so a read that raced a change cannot put the old
    answer back.
    """

    LIMIT = 100_000  # phones; past it everything is forgotten (a bound, not an eviction policy)
    MAX_AGE_S = 60.0
    RETRY_S = 5.0
    POLL_S = 0.2  # how often the listening thread looks whether it should stop

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Phone]] = {}
        self.generation = 0
        self.listening = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, caller: str) -> Phone | None:
        """The phone of ``caller`` if it is known, else None (then ask the database)."""
        entry = self.entries.get(caller)
        if entry is None or time.monotonic() - entry[0] > self.MAX_AGE_S:
            return None
        return entry[1]

    def fill(self, caller: str, phone: Phone | None, generation: int) -> None:
        """Keep what the database said of ``caller``, read after ``generation`` was taken."""
        if phone is None or not _cacheable(phone) or not self.listening.is_set():
            return
        with self._lock:
            if generation != self.generation:
                return  # something changed while it was read
            if len(self.entries) >= self.LIMIT:
                self.entries.clear()
            self.entries[caller] = (time.monotonic(), phone)

    def forget(self) -> None:
        with self._lock:
            self.generation += 1
            self.entries.clear()

    def start(self) -> None:
        """Listen for changes on a thread of its own (PostgreSQL only)."""
        if connections[DEFAULT_DB_ALIAS].vendor != "postgresql" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._listen, name="callers", daemon=True)
        self._thread.start()

    def ready(self, timeout: float) -> bool:
        """Wait until it listens, if it is to listen at all (not on SQLite)."""
        return self._thread is None or self.listening.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.POLL_S * 5)

    def _listen(self) -> None:
        # A connection of its own: LISTEN holds it for as long as the server runs, and
        # Django's connection handling (CONN_MAX_AGE, the thread check) is not for that.
        db = connections.create_connection(DEFAULT_DB_ALIAS)
        while not self._stop.is_set():
            try:
                # TCP keepalives: a peer gone without a word is noticed in about 25 s.
                params = {**db.get_connection_params(), **KEEPALIVES}
                pg = db.get_new_connection(params)
            except Exception as exc:
                log.warning("FastAGI: cannot listen for caller changes (%s); calls ask", exc)
                self._stop.wait(self.RETRY_S)
                continue
            try:
                with pg:
                    pg.autocommit = True
                    pg.execute(f"LISTEN {CHANNEL}")
                    # Anything kept before this connection listened may be out of date.
                    self.forget()
                    self.listening.set()
                    while not self._stop.is_set():
                        for _notify in pg.notifies(timeout=self.POLL_S):
                            self.forget()
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("FastAGI: stopped listening for caller changes (%s)", exc)
            finally:
                self.listening.clear()
                self.forget()
            self._stop.wait(self.RETRY_S)


def _cacheable(phone: Phone) -> bool:
    """Only callers identified without a question: verified phone, member, plan at hand."""
    member: Any = phone.member
    membership = getattr(member, "membership", None)
    try:
        plan = member.call_plan
    except CallPlan.DoesNotExist:
        return False
    return (
        phone.verified_at is not None
        and membership is not None
        and membership.status == MembershipStatus.MEMBER
        and plan is not None
    )
