"""Timeouts on the call path (issue 13, part G; item 12 of its list).

A blocked database must give the caller a "try again later" prompt within 2 s, never
silence: the real FastAGI server over TCP, the real PostgreSQL, and a row locked (or the
server's only connection kept busy) by somebody else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import pytest
from django.db import DatabaseError, connection
from django.db import connection as borrowed

from panel.models import CreditHold, MemberBalance, UsageEvent
from telephony import asterisk_sim, services
from telephony.fastagi import Server
from telephony.models import CallRecord, CallState
from tests.telephony.conftest import where

T = TypeVar("T")

pytestmark = pytest.mark.django_db(transaction=True)

ACCESS = "+4930900900"
ALICE = "+4915123456789"  # alice's verified phone (the `caller` fixture)


class Timed(list[tuple[str, str]]):
    """A call's transcript that also notes when each line passed the simulator."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, item: tuple[str, str]) -> None:
        self.at.append(time.monotonic())
        super().append(item)

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        for item in items:
            self.append(item)


def call(server: Server, uniqueid: str, dtmf: str = "030123456") -> tuple[asterisk_sim.Call, float]:
    """An authorize from alice's phone; with the seconds from her number reaching the
    server (GET DATA's reply) to the end of the session."""
    done = asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller=ALICE,
            access=ACCESS,
            args=[ACCESS, ALICE, "ast1"],
            dtmf=[dtmf],
            transcript=Timed(),
        ),
        *where(server),
        timeout=15,
    )
    ended = time.monotonic()
    transcript = done.transcript
    assert isinstance(transcript, Timed)
    asked = next(n for n, (d, line) in enumerate(transcript) if "custom/enter-number" in line)
    return done, ended - transcript.at[asked + 1]


def settle(server: Server, uniqueid: str) -> asterisk_sim.Call:
    """The hangup handler's settle: answered 60 s (Berlin, 1/1 at 0.008/min)."""
    args = ["ANSWER", "1000", "1060", "1", services.settle_token(uniqueid)]
    return asterisk_sim.run(
        asterisk_sim.Call(uniqueid=uniqueid, caller="", access="", script="settle", args=args),
        *where(server),
        timeout=15,
    )


def heard(done: asterisk_sim.Call) -> list[str]:
    return [line.split()[2] for d, line in done.transcript if d == ">>" and "STREAM" in line]


@contextmanager
def balance_locked(member_id: int) -> Iterator[None]:
    """The member's balance row locked by another session, in a transaction left open."""
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
    ) as locker:
        row = locker.execute(
            "SELECT member_id FROM panel_memberbalance WHERE member_id = %s FOR UPDATE",
            [member_id],
        ).fetchone()
        assert row is not None, "no balance row to lock"
        try:
            yield
        finally:
            locker.rollback()


def test_a_locked_balance_gives_try_later_within_two_seconds(
    start_server, carrier, access, caller, alice
):
    """Before, a locked balance row left the caller 6.6 s in silence, and a lock never
    released would have kept callers forever. Nothing is held for the call told to wait.
    """
    server = start_server()
    with balance_locked(alice.pk):
        done, took = call(server, "blocked")
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert done.variables["AUTH_REASON"] == "try again later"
    assert heard(done)[-1] == "custom/try-later"
    assert took < 2.0, f"the caller waited {took:.2f}s after keying the number"
    assert not CreditHold.objects.exists()
    assert MemberBalance.objects.get(member=alice).held == 0
    assert not CallRecord.objects.filter(state=CallState.AUTHORIZED).exists()
    # The lock gone, the next call goes through (the connection that failed is usable again).
    after, _ = call(server, "after")
    assert after.variables["AUTH_RESULT"] == "OK"
    assert CallRecord.objects.get(uniqueid="after").state == CallState.AUTHORIZED


def test_a_blocked_connection_pool_gives_try_later_not_silence(
    start_server, carrier, access, caller, alice
):
    """The server's only database connection is busy for 1.5 s: the caller is not kept
    waiting for it beyond half a second, and hears why."""
    server = start_server(db_connections=1)
    # The caller and the rates in memory: only the call's own steps need the database.
    warm, _ = call(server, "warm")
    assert warm.variables["AUTH_RESULT"] == "OK"
    assert settle(server, "warm").variables["SETTLED"] == "OK"
    holder = threading.Thread(target=server.database.run, args=(time.sleep, 1.5), daemon=True)
    holder.start()
    try:
        deadline = time.monotonic() + 2
        while not server.database.free.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.database.free.empty(), "the connection was never borrowed"
        done, took = call(server, "starved")
    finally:
        holder.join(5)
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert done.variables["AUTH_REASON"] == "try again later"
    assert heard(done)[-1] == "custom/try-later"
    assert took < 1.2, f"the caller waited {took:.2f}s for a database connection"
    assert not CreditHold.objects.filter(state="held").exists()
    after, _ = call(server, "after")
    assert after.variables["AUTH_RESULT"] == "OK"


def test_the_servers_connections_have_lock_and_statement_timeouts(start_server, caller):
    """What bounds every step: no statement on the call path waits for a lock 0.8 s, or
    runs 1.2 s."""
    server = start_server(db_connections=1)

    def run(step: Callable[[], T]) -> T:
        # In a thread of its own, as the server's sessions run them: the pool lends its
        # connection as the thread's, and this (main) thread's own must stay where it is.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(server.database.run, step).result()

    def show() -> tuple[str, str]:
        with borrowed.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            lock = cursor.fetchone()[0]
            cursor.execute("SHOW statement_timeout")
            statement = cursor.fetchone()[0]
        return lock, statement

    assert run(show) == ("800ms", "1200ms")

    def sleep() -> None:
        with borrowed.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(5)")

    began = time.monotonic()
    with pytest.raises(DatabaseError, match="statement timeout"):
        run(sleep)
    assert time.monotonic() - began < 2.0
    assert run(show) == ("800ms", "1200ms"), "the reopened one has them too"


def test_a_settle_meeting_a_locked_balance_is_not_acknowledged_and_its_retry_bills_once(
    start_server, carrier, access, caller, alice
):
    """The hangup handler keeps its settle unless told SETTLED=OK, and tries again (the
    AstDB entry, then the reconciliation): a settle that could not be written must not
    say OK, and must leave the call as it was."""
    server = start_server()
    done, _ = call(server, "late")
    assert done.variables["AUTH_RESULT"] == "OK"
    with balance_locked(alice.pk):
        began = time.monotonic()
        refused = settle(server, "late")
        took = time.monotonic() - began
    assert refused.variables.get("SETTLED") != "OK"
    assert took < 2.0, f"the hangup handler waited {took:.2f}s"
    record = CallRecord.objects.get(uniqueid="late")
    assert record.state == CallState.AUTHORIZED
    assert not UsageEvent.objects.exists()
    for _ in range(2):
        assert settle(server, "late").variables["SETTLED"] == "OK"
    record.refresh_from_db()
    assert (record.state, record.billed_seconds) == (CallState.SETTLED, 60)
    assert UsageEvent.objects.filter(source_key="hold:call:late").count() == 1
    assert MemberBalance.objects.get(member=alice).held == 0


def test_a_stopped_server_leaves_no_database_connection_open(start_server, carrier, access, caller):
    """A step still running when the server stops closes its connection when it ends:
    closed under it, the step reopened it and the server kept it (a PostgreSQL session for
    as long as the process lived)."""
    from telephony.fastagi import Unavailable
    from telephony.models import Phone

    server = start_server(db_connections=2)
    warm, _ = call(server, "warm")
    assert warm.variables["AUTH_RESULT"] == "OK"
    started = threading.Event()

    def step() -> int:
        Phone.objects.count()
        started.set()
        time.sleep(0.5)
        return Phone.objects.count()

    holder = threading.Thread(target=server.database.run, args=(step,), daemon=True)
    holder.start()
    assert started.wait(5)
    server.shutdown()
    server.server_close()
    holder.join(5)
    assert not holder.is_alive()
    assert [db.connection for db in server.database.all] == [None, None]
    with pytest.raises(Unavailable):
        server.database.run(Phone.objects.count)
