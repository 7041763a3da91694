from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from panel.models import CreditHold, HoldState, MemberBalance, UsageEvent
from panel.services import ledger
from panel.services.ledger import InsufficientCredit, LedgerError
from tests.panel.ledger.conftest import pay


def hold(member, key, amount="1.00", minutes=5):
    return ledger.credit_hold(
        member=member,
        amount=Decimal(amount),
        key=key,
        expires_at=timezone.now() + timedelta(minutes=minutes),
    )


def test_hold_needs_available_credit(alice):
    with pytest.raises(InsufficientCredit):
        hold(alice, "h0")
    pay(alice, "5.00", "p1")
    hold(alice, "h1", "4.00")
    with pytest.raises(InsufficientCredit):
        hold(alice, "h2", "1.50")
    assert MemberBalance.objects.get(member=alice).held == Decimal("4")


def test_settle_charges_the_actual_amount_and_frees_the_rest(alice):
    pay(alice, "5.00", "p1")
    hold(alice, "call-1", "3.00")
    ledger.credit_settle(
        key="call-1",
        amount=Decimal("1.234567"),
        kind="call",
        quantity=Decimal("1"),
        unit="call",
        unit_cost=Decimal("1.234567"),
    )
    balance = MemberBalance.objects.get(member=alice)
    assert balance.held == 0
    assert balance.unbilled == Decimal("1.234567")
    assert balance.available == Decimal("3.765433")
    assert UsageEvent.objects.get(source_key="hold:call-1").amount == Decimal("1.234567")
    # Settling again with the same amount is a no-op; with another it is refused.
    ledger.credit_settle(key="call-1", amount=Decimal("1.234567"))
    with pytest.raises(LedgerError, match="settled"):
        ledger.credit_settle(key="call-1", amount=Decimal("1"))
    with pytest.raises(LedgerError, match="covers"):
        hold(alice, "call-2", "1.00")
        ledger.credit_settle(key="call-2", amount=Decimal("2"))


def test_release_and_expiry_free_the_credit(alice):
    pay(alice, "2.00", "p1")
    hold(alice, "r1", "1.00")
    assert ledger.credit_release(key="r1") is True
    assert ledger.credit_release(key="r1") is False
    hold(alice, "r2", "2.00", minutes=-1)
    assert ledger.release_expired_holds() == 1
    assert CreditHold.objects.get(key="r2").state == HoldState.EXPIRED
    assert MemberBalance.objects.get(member=alice).held == 0


def test_an_expired_hold_settled_late_is_charged_once(alice):
    """The ledger's expiry ran before the late settle (a hangup that came after the margin)."""
    pay(alice, "2.00", "p1")
    hold(alice, "late", "2.00", minutes=-1)
    assert ledger.release_expired_holds() == 1
    assert MemberBalance.objects.get(member=alice).held == 0
    ledger.credit_settle(key="late", amount=Decimal("0.75"))
    ledger.credit_settle(key="late", amount=Decimal("0.75"))  # told twice
    settled = CreditHold.objects.get(key="late")
    assert (settled.state, settled.settled_amount) == (HoldState.SETTLED, Decimal("0.75"))
    balance = MemberBalance.objects.get(member=alice)
    assert (balance.held, balance.unbilled) == (0, Decimal("0.75"))
    assert UsageEvent.objects.filter(source_key="hold:late").count() == 1
    # A hold released on purpose (nothing happened) is not charged later.
    hold(alice, "released", "1.00")
    ledger.credit_release(key="released")
    with pytest.raises(LedgerError, match="released"):
        ledger.credit_settle(key="released", amount=Decimal("0.10"))


def test_the_same_hold_key_twice_is_the_same_hold(alice, bob):
    pay(alice, "2.00", "p1")
    first = hold(alice, "same")
    assert hold(alice, "same").pk == first.pk
    assert MemberBalance.objects.get(member=alice).held == Decimal("1")
    with pytest.raises(LedgerError, match="already used"):
        hold(bob, "same")


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_holds_on_credit_for_ten(alice):
    assert connection.vendor == "postgresql"
    pay(alice, "10.00", "p-conc")
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        try:
            barrier.wait()
            hold(alice, f"conc-{n}", "1.00")
            result = "held"
        except InsufficientCredit:
            result = "refused"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("held") == 10
    assert outcomes.count("refused") == 40
    balance = MemberBalance.objects.get(member=alice)
    assert balance.held == Decimal("10")
    assert balance.available == 0
    assert CreditHold.objects.filter(member=alice, state=HoldState.HELD).count() == 10
