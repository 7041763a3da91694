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
    total_seconds = sum(int(r.variables["LIMIT_MS_1"]) // 1000 for r in authorized)
    assert total_seconds <= 60
    assert len(authorized) >= 1
    # Every authorized call runs to its full limit.
    for r in authorized:
        limit = int(r.variables["LIMIT_MS_1"]) // 1000
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


def _funded_phone(member, number: str, amount: str, reference: str) -> Phone:
    phone = services.phone_add(member=member, number=number)
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    ledger.payment_record(
        actor=None,
        member=member,
        amount=Decimal(amount),
        received_on=timezone.localdate(),
        reference=reference,
        source_key=reference,
    )
    phone.refresh_from_db()
    return phone


def _dial_at_once(agi_server, access, phone: Phone, prefix: str, n: int = 30) -> list:
    """n call setups released together by a barrier; the simulated calls as they ended."""
    host, port = agi_server
    results: list[asterisk_sim.Call] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def dial(i: int) -> None:
        barrier.wait()
        done = asterisk_sim.run(
            asterisk_sim.Call(
                uniqueid=f"{prefix}{i}",
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

    threads = [threading.Thread(target=dial, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    return results


def test_concurrent_setups_never_exceed_max_concurrent(agi_server, carrier, access, alice):
    """The count of calls in progress is taken after the member's setups took turns."""
    phone = _funded_phone(alice, "+49 151 11113333", "100.00", "plenty")
    CallPlan.objects.filter(member=alice).update(max_concurrent=2, per_call_cap=Decimal("1.00"))
    results = _dial_at_once(agi_server, access, phone, "m")
    authorized = [r for r in results if r.variables.get("AUTH_RESULT") == "OK"]
    assert len(authorized) == 2
    assert CallRecord.objects.filter(state=CallState.AUTHORIZED).count() == 2


def test_concurrent_setups_hold_whole_caps_then_the_rest(agi_server, carrier, access, alice):
    """Thirty at once on 3.50 with a cap of 1.00: three whole caps, one of 0.50, no more."""
    phone = _funded_phone(alice, "+49 151 11114444", "3.50", "three-and-a-half")
    CallPlan.objects.filter(member=alice).update(max_concurrent=50, per_call_cap=Decimal("1.00"))
    results = _dial_at_once(agi_server, access, phone, "h")
    authorized = [r for r in results if r.variables.get("AUTH_RESULT") == "OK"]
    assert len(authorized) == 4
    holds = sorted(CreditHold.objects.filter(member=alice).values_list("amount", flat=True))
    assert holds == [Decimal("0.5"), Decimal(1), Decimal(1), Decimal(1)]
    balance = MemberBalance.objects.get(member=alice)
    assert balance.held == Decimal("3.5")
    assert balance.available == 0
