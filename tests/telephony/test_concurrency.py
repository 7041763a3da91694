"""Fifty calls at once on credit for one minute: together they never spend more than it."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from panel.models import CreditHold, MemberBalance
from panel.services import ledger
from telephony import asterisk_sim, services
from telephony.models import CallPlan, CallRecord, CallState, Phone

pytestmark = pytest.mark.django_db(transaction=True)


def test_fifty_concurrent_authorizations_never_exceed_the_credit(
    agi_server, carrier, access, alice
):
    phone = services.phone_add(member=alice, number="+49 151 11112222")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    # Germany fixed: 0.01/min in 60/60. The credit pays exactly one minute.
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("0.01"),
        received_on=timezone.localdate(),
        reference="one minute",
        source_key="one-minute",
    )
    CallPlan.objects.filter(member=alice).update(max_concurrent=50)
    host, port = agi_server
    results: list[asterisk_sim.Call] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def dial(n: int) -> None:
        barrier.wait()
        done = asterisk_sim.run(
            asterisk_sim.Call(
                uniqueid=f"c{n}",
                caller=phone.number,
                access=access.number,
                args=[access.number],
                dtmf=["0401234567"],
            ),
            host,
            port,
        )
        with lock:
            results.append(done)

    threads = [threading.Thread(target=dial, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 50, "every call got an answer"
    authorized = [r for r in results if r.variables.get("AUTH_RESULT") == "OK"]
    total_seconds = sum(int(r.variables["LIMIT_MS"]) // 1000 for r in authorized)
    assert total_seconds <= 60
    assert len(authorized) >= 1
    # Every authorized call runs to its full limit.
    for r in authorized:
        limit = int(r.variables["LIMIT_MS"]) // 1000
        services.call_settle(
            uniqueid=r.uniqueid,
            dial_status="ANSWER",
            answered_at=Decimal(0),
            ended_at=Decimal(limit),
        )
    billed = CallRecord.objects.filter(state=CallState.SETTLED).aggregate(s=Sum("cost"))["s"]
    assert billed <= Decimal("0.01")
    balance = MemberBalance.objects.get(member=alice)
    assert balance.available >= 0
    assert balance.held == 0


def test_concurrent_setups_never_exceed_max_concurrent(agi_server, carrier, access, alice):
    """The count of calls in progress is taken after the member's setups took turns."""
    phone = services.phone_add(member=alice, number="+49 151 11113333")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("100.00"),
        received_on=timezone.localdate(),
        reference="plenty",
        source_key="plenty",
    )
    CallPlan.objects.filter(member=alice).update(max_concurrent=2, per_call_cap=Decimal("1.00"))
    host, port = agi_server
    results: list[asterisk_sim.Call] = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def dial(n: int) -> None:
        barrier.wait()
        done = asterisk_sim.run(
            asterisk_sim.Call(
                uniqueid=f"m{n}",
                caller=phone.number,
                access=access.number,
                args=[access.number],
                dtmf=["0401234567"],
            ),
            host,
            port,
        )
        with lock:
            results.append(done)

    threads = [threading.Thread(target=dial, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 30
    authorized = [r for r in results if r.variables.get("AUTH_RESULT") == "OK"]
    assert len(authorized) == 2
    assert CallRecord.objects.filter(state=CallState.AUTHORIZED).count() == 2


def test_concurrent_setups_hold_whole_caps_then_the_rest(agi_server, carrier, access, alice):
    """Thirty at once on 3.50 with a cap of 1.00: three whole caps, one of 0.50, no more."""
    phone = services.phone_add(member=alice, number="+49 151 11114444")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("3.50"),
        received_on=timezone.localdate(),
        reference="three and a half",
        source_key="three-and-a-half",
    )
    CallPlan.objects.filter(member=alice).update(max_concurrent=50, per_call_cap=Decimal("1.00"))
    host, port = agi_server
    results: list[asterisk_sim.Call] = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def dial(n: int) -> None:
        barrier.wait()
        done = asterisk_sim.run(
            asterisk_sim.Call(
                uniqueid=f"h{n}",
                caller=phone.number,
                access=access.number,
                args=[access.number],
                dtmf=["0401234567"],
            ),
            host,
            port,
        )
        with lock:
            results.append(done)

    threads = [threading.Thread(target=dial, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 30
    authorized = [r for r in results if r.variables.get("AUTH_RESULT") == "OK"]
    assert len(authorized) == 4
    holds = sorted(CreditHold.objects.filter(member=alice).values_list("amount", flat=True))
    assert holds == [Decimal("0.5"), Decimal(1), Decimal(1), Decimal(1)]
    balance = MemberBalance.objects.get(member=alice)
    assert balance.held == Decimal("3.5")
    assert balance.available == 0
