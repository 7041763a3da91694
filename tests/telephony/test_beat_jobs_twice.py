"""Beat's jobs are safe if two beats ever run them at once (issue 16, item 4).

One beat leads the cluster (panel/leader.py), but between a leader losing its database and
noticing it, a second one may start. Each job of the database alone is run here by two
threads at the same moment, each on a connection of its own, on work that is due: what it
does happens once. The jobs that talk to nodes (usage, stuck jobs, purges, DNS proofs, the
AMI reconciliation) claim their rows the same way; their peers are in their own tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from panel import tasks as panel_tasks
from panel.models import AuditEntry, CreditHold, Heartbeat, HoldState, MemberBalance
from panel.services import ledger
from telephony import services
from telephony import tasks as telephony_tasks
from telephony.models import CallRecord, CallState, DeckState, PinLock, RateDeck

pytestmark = pytest.mark.django_db(transaction=True)


def twice_at_once(job: Callable[[], Any]) -> list[Any]:
    """``job`` run by two threads released together; what each returned (or raised)."""
    start = threading.Barrier(2)
    results: list[Any] = []

    def run() -> None:
        start.wait()
        try:
            results.append(job())
        except Exception as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_the_heartbeat_twice_at_once_is_one_row():
    for _ in range(3):
        Heartbeat.objects.all().delete()
        results = twice_at_once(panel_tasks.heartbeat)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert Heartbeat.objects.filter(name="beat").count() == 1


def test_expired_holds_and_calls_are_released_once(alice, carrier, access, caller):
    for n in range(3):
        ledger.credit_hold(
            member=alice,
            amount=Decimal("0.50"),
            key=f"old-{n}",
            expires_at=timezone.now() - timedelta(minutes=1),
        )
    decision = services.call_authorize(
        uniqueid="lost-hangup",
        member=alice,
        caller=caller.number,
        access_number=access,
        digits="030123456",
    )
    assert decision.ok
    later = timezone.now() + timedelta(hours=6)
    released = twice_at_once(panel_tasks.release_expired_holds)
    assert sum(released) == 3, released
    expired = twice_at_once(lambda: services.expire_unsettled_calls(now=later))
    assert sum(expired) == 1, expired
    assert CallRecord.objects.get(uniqueid="lost-hangup").state == CallState.EXPIRED
    assert not CreditHold.objects.filter(state=HoldState.HELD).exists()
    assert MemberBalance.objects.get(member=alice).held == 0


def test_pin_lock_notices_are_mailed_once(alice, bob):
    for member, key in ((alice, "account:1001"), (bob, "caller:+4915199999")):
        PinLock.objects.create(key=key, member=member, failures=10, blocked=True, notify=True)
    mail.outbox.clear()  # the members' welcome
    sent = twice_at_once(telephony_tasks.notify_pin_locks)
    assert sum(sent) == 2, sent
    assert sorted(m.to[0] for m in mail.outbox) == [alice.email, bob.email]


def test_a_stale_import_is_failed_once(carrier, carol):
    deck = services.deck_draft(
        carrier=carrier,
        actor=carol,
        filename="stuck.csv",
        content=b"prefix,name,price\n49,Germany,0.02\n",
        effective_from=timezone.now(),
    )
    RateDeck.objects.filter(pk=deck.pk).update(
        state=DeckState.IMPORTING, version=2, queued_at=timezone.now() - timedelta(hours=2)
    )
    failed = twice_at_once(telephony_tasks.fail_stale_deck_imports)
    assert sum(failed) == 1, failed
    assert RateDeck.objects.get(pk=deck.pk).state == DeckState.FAILED
    assert AuditEntry.objects.filter(action="rate_deck.import_timed_out").count() == 1
