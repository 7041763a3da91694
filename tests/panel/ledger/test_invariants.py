"""Hypothesis: whatever happens to the books, they stay balanced and exact."""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from panel.models import (
    AccountPurpose,
    BillingPeriod,
    CreditHold,
    Leg,
    MemberBalance,
    Share,
    StatementLine,
    Supplier,
    Transaction,
    UsageEvent,
)
from panel.services import closing, ledger
from panel.services.ledger import InsufficientCredit, LedgerError, UsageInput
from tests.factories import make_statutes, make_user
from tests.panel.ledger.conftest import at

cents = st.integers(min_value=1, max_value=500_00).map(lambda n: Decimal(n) / 100)
exact = st.integers(min_value=0, max_value=5_000_000).map(lambda n: Decimal(n) / 1_000_000)


@given(
    total=st.integers(min_value=0, max_value=10**9), parts=st.integers(min_value=1, max_value=2000)
)
def test_split_sums_exactly_and_differs_by_at_most_a_cent(total, parts):
    amount = Decimal(total) / 100
    split = closing.split_equally(amount, parts)
    assert len(split) == parts
    assert sum(split) == amount
    assert max(split) - min(split) <= Decimal("0.01")
    assert all(part >= 0 for part in split)


operation = st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 2), cents),
    st.tuples(st.just("use"), st.integers(0, 2), exact, st.integers(1, 27)),
    st.tuples(st.just("hold"), st.integers(0, 2), cents),
    st.tuples(st.just("settle"), st.integers(0, 30), exact),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("invoice"), cents),
    st.tuples(st.just("reverse"), st.integers(0, 30)),
)


class LedgerInvariants(TestCase):
    """Each example runs in its own rolled-back transaction, so each builds its own world."""

    def world(self) -> None:
        self.admin = make_user(email="carol@example.org", is_staff=True, is_superuser=True)
        statutes = make_statutes()
        from tests.conftest import make_member

        self.members = [
            make_member(f"m{i}@example.org", statutes=statutes, admin=self.admin) for i in range(3)
        ]
        Share.objects.update(issued_at=at(2026, 1, 1))
        self.supplier = Supplier.objects.create(name="Supplier")
        self.october = ledger.period_for(date(2026, 10, 1))

    def apply(self, ops) -> None:
        holds: list[str] = []
        for n, op in enumerate(ops):
            with contextlib.suppress(InsufficientCredit, LedgerError):
                self.apply_one(n, op, holds)

    def apply_one(self, n, op, holds) -> None:
        kind = op[0]
        if kind == "pay":
            ledger.payment_record(
                actor=None,
                member=self.members[op[1]],
                amount=op[2],
                received_on=date(2026, 10, 2),
                reference="p",
                source_key=f"pay-{n}",
            )
        elif kind == "use":
            ledger.record_usage(
                member=self.members[op[1]],
                service="hosting",
                kind="disk",
                quantity=Decimal(1),
                unit="GB-month",
                unit_cost=op[2],
                cost_source="x",
                occurred_at=at(2026, 10, op[3]),
                source_key=f"use-{n}",
            )
        elif kind == "hold":
            key = f"hold-{n}"
            ledger.credit_hold(
                member=self.members[op[1]],
                amount=op[2],
                key=key,
                expires_at=timezone.now() + timedelta(minutes=5),
            )
            holds.append(key)
        elif kind == "settle" and holds:
            key = holds[op[1] % len(holds)]
            held = CreditHold.objects.get(key=key).amount
            ledger.credit_settle(key=key, amount=min(op[2], held))
        elif kind == "release" and holds:
            ledger.credit_release(key=holds[op[1] % len(holds)])
        elif kind == "invoice":
            ledger.supplier_invoice_record(
                actor=self.admin,
                supplier=self.supplier,
                service="hosting",
                period=self.october,
                reference=f"inv-{n}",
                invoice_date=date(2026, 10, 20),
                amount=op[1],
            )
        elif kind == "reverse":
            txns = list(Transaction.objects.filter(kind="member_payment", reversed_by__isnull=True))
            if txns:
                ledger.transaction_reverse(
                    txn=txns[op[1] % len(txns)], actor=self.admin, reason="test"
                )

    def check_books(self) -> None:
        debit, credit = ledger.ledger_totals()
        assert debit == credit, "trial balance is zero"
        unbalanced = [
            t
            for t in Transaction.objects.annotate(d=Sum("legs__debit"), c=Sum("legs__credit"))
            if t.d != t.c
        ]
        assert not unbalanced, "every transaction balances"
        for member in self.members:
            balance = MemberBalance.objects.filter(member=member).first()
            if balance is None:
                continue
            credit_acc = ledger.account_for(purpose=AccountPurpose.MEMBER_CREDIT, member=member)
            receivable = ledger.account_for(purpose=AccountPurpose.MEMBER_RECEIVABLE, member=member)
            legs = Leg.objects.filter(account__in=[credit_acc, receivable]).aggregate(
                d=Sum("debit"), c=Sum("credit")
            )
            assert balance.posted == (legs["c"] or 0) - (legs["d"] or 0), "posted follows the legs"
            assert balance.held >= 0
            assert balance.unbilled == (
                UsageEvent.objects.filter(member=member).aggregate(s=Sum("amount"))["s"] or 0
            ) - (
                StatementLine.objects.filter(member=member).aggregate(s=Sum("exact_amount"))["s"]
                or 0
            )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=st.lists(operation, max_size=25))
    def test_any_sequence_keeps_the_books_balanced_and_closes_exactly(self, ops):
        self.world()
        self.apply(ops)
        self.check_books()
        preview = closing.close_preview(period=self.october)
        closing.period_close_start(period=self.october, actor=self.admin, deficit_choice="reserve")
        closing.period_close_run(period_id=self.october.pk)
        self.check_books()
        period = BillingPeriod.objects.get(pk=self.october.pk)
        assert period.result == preview.result
        # Late usage after the close leaves the closed period's figures alone.
        lines_before = list(
            StatementLine.objects.filter(period=period).values_list("amount", flat=True)
        )
        ledger.record_usage(
            member=self.members[0],
            service="hosting",
            kind="disk",
            quantity=Decimal(1),
            unit="GB-month",
            unit_cost=Decimal("0.5"),
            cost_source="x",
            occurred_at=at(2026, 10, 9),
            source_key="late-one",
        )
        assert (
            list(StatementLine.objects.filter(period=period).values_list("amount", flat=True))
            == lines_before
        )
        assert BillingPeriod.objects.get(pk=period.pk).result == period.result
        self.check_books()

    @settings(max_examples=30, deadline=None)
    @given(amounts=st.lists(exact, min_size=1, max_size=40))
    def test_replaying_a_usage_batch_changes_nothing(self, amounts):
        self.world()
        events = [
            UsageInput(
                member_id=self.members[i % 3].pk,
                service="calls",
                kind="call",
                quantity=Decimal(1),
                unit="minute",
                unit_cost=a,
                cost_source="deck",
                occurred_at=at(2026, 10, 1 + i % 27),
                source_key=f"r{i}",
            )
            for i, a in enumerate(amounts)
        ]
        ledger.record_usage_batch(events=events)
        state = (
            list(UsageEvent.objects.order_by("id").values_list("source_key", "amount")),
            dict(MemberBalance.objects.values_list("member_id", "unbilled")),
        )
        replay = ledger.record_usage_batch(events=events)
        assert replay.inserted == 0
        assert (
            list(UsageEvent.objects.order_by("id").values_list("source_key", "amount")),
            dict(MemberBalance.objects.values_list("member_id", "unbilled")),
        ) == state
