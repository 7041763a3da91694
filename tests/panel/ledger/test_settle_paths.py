"""Hypothesis: credit_settle's one-statement path on PostgreSQL writes what the general path does.

The one-statement path is what call setups use; the general path is what SQLite (the demo) and
every unusual case use. Both settle a hold of the same member with the same arguments, and
the holds, the usage events and the balance movements must be the same.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from unittest import mock

from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from panel.models import BillingPeriod, CreditHold, MemberBalance, UsageEvent
from panel.services import ledger
from tests.factories import make_user
from tests.panel.ledger.conftest import at, pay

micro = st.integers(min_value=0, max_value=3_000_000).map(lambda n: Decimal(n) / 1_000_000)
USAGE_FIELDS = ["service", "kind", "quantity", "unit", "unit_cost", "amount", "cost_source"]
USAGE_FIELDS += ["cost_rate_id", "occurred_at", "payload_hash", "period_id", "member_id"]


class SettlePaths(TestCase):
    def settle(self, member, key, *, general: bool, hold_amount, **kwargs):
        ledger.credit_hold(
            member=member,
            amount=hold_amount,
            key=key,
            expires_at=timezone.now() + timedelta(minutes=5),
        )
        before = MemberBalance.objects.get(member=member)
        fast = ledger._settle_in_one_statement
        settled_at_once = []

        def spy(**kw):
            if general:
                return None  # as on SQLite
            done = fast(**kw)
            settled_at_once.append(done is not None)
            return done

        with mock.patch.object(ledger, "_settle_in_one_statement", spy):
            hold = ledger.credit_settle(key=key, **kwargs)
        after = MemberBalance.objects.get(member=member)
        stored = CreditHold.objects.get(key=key)
        assert (hold.state, hold.settled_amount) == (stored.state, stored.settled_amount)
        usage = UsageEvent.objects.filter(source_key=f"hold:{key}").values(*USAGE_FIELDS).first()
        return (
            (stored.state, stored.settled_amount, stored.amount),
            usage,
            (after.held - before.held, after.unbilled - before.unbilled, after.posted),
            settled_at_once,
        )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        hold_amount=micro.filter(lambda d: d > 0),
        fraction=st.fractions(min_value=0, max_value=1),
        quantity=st.sampled_from([None, Decimal(1), Decimal(2), Decimal("0.5")]),
        month=st.integers(min_value=1, max_value=12),
        period_exists=st.booleans(),
        holder=st.sampled_from(["unknown", "right", "wrong"]),
    )
    def test_both_paths_write_the_same(
        self, hold_amount, fraction, quantity, month, period_exists, holder
    ):
        """Whether the caller names the hold's member and service or not, or names the wrong ones.

        A wrong holder (a caller's mistake) must not charge anyone else: the fast path
        declines, and the general path settles the hold for its own member.
        """
        member = make_user(email="settle@example.org")
        other = make_user(email="other@example.org")
        pay(member, "10.00", "top-up")
        amount = (hold_amount * Decimal(fraction.numerator) / fraction.denominator).quantize(
            Decimal("0.000001")
        )
        unit_cost = None
        if quantity is not None:
            unit_cost = (amount / quantity).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
            amount = (quantity * unit_cost).quantize(Decimal("0.000001"))
        occurred = at(2027, month, 10)
        if period_exists:
            ledger.period_for(occurred.date())
        else:
            BillingPeriod.objects.filter(starts_on=occurred.date().replace(day=1)).delete()
        common = {
            "hold_amount": hold_amount,
            "amount": amount,
            "kind": "call",
            "quantity": quantity,
            "unit": "call",
            "unit_cost": unit_cost,
            "cost_source": "deck v3 +4930: 0.008/min",
            "occurred_at": occurred,
        }
        named = {"unknown": None, "right": (member.pk, "calls"), "wrong": (other.pk, "calls")}
        fast = self.settle(member, "k-fast", general=False, holder=named[holder], **common)
        general = self.settle(member, "k-general", general=True, **common)
        assert fast[0] == general[0]
        assert fast[1] == general[1]
        assert fast[2][:2] == general[2][:2]
        did = (period_exists or amount == 0) and holder != "wrong"
        assert fast[3] == [did], "the fast path did it, or declined"
        assert not UsageEvent.objects.filter(member=other).exists()
        # Settling again is a no-op on both paths.
        assert ledger.credit_settle(key="k-fast", amount=amount).state == "settled"
        assert ledger.credit_settle(key="k-general", amount=amount).state == "settled"
