"""Closing a period, with a worked example computed by hand."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from panel.models import (
    AccountPurpose,
    AuditEntry,
    BillingPeriod,
    MemberBalance,
    PeriodState,
    Share,
    StatementLine,
    Transaction,
    TransactionKind,
)
from panel.services import closing, ledger
from panel.services.ledger import LedgerError
from tests.panel.ledger.conftest import at, pay


@pytest.fixture
def founders(alice, bob):
    """alice and bob have held their shares since January (alice's is the older one)."""
    Share.objects.filter(user=alice).update(issued_at=at(2026, 1, 1))
    Share.objects.filter(user=bob).update(issued_at=at(2026, 1, 2))
    return alice, bob


def record(member, service, kind, quantity, unit, unit_cost, key, when=None):
    return ledger.record_usage(
        member=member,
        service=service,
        kind=kind,
        quantity=Decimal(quantity),
        unit=unit,
        unit_cost=Decimal(unit_cost),
        cost_source="hand-made rates",
        occurred_at=when or at(2026, 10, 15),
        source_key=key,
    )


@pytest.fixture
def worked_october(founders, carol, supplier):
    alice, bob = founders
    pay(alice, "1.00", "alice-prepaid", day=date(2026, 10, 1))
    record(alice, "hosting", "disk", "10", "GB-month", "0.043333", "a-disk")  # 0.433330
    record(alice, "hosting", "transfer", "3.333", "GB", "0.01", "a-transfer")  # 0.033330
    record(alice, "calls", "call", "7", "minute", "0.0123", "a-call")  # 0.086100
    record(bob, "hosting", "disk", "5", "GB-month", "0.043333", "b-disk")  # 0.216665
    record(bob, "hosting", "disk", "1", "GB-month", "1", "b-nov", when=at(2026, 11, 2))  # November
    october = ledger.period_for(date(2026, 10, 1))
    ledger.supplier_invoice_record(
        actor=carol,
        supplier=supplier,
        service="hosting",
        period=october,
        reference="H-10",
        invoice_date=date(2026, 10, 31),
        amount=Decimal("0.29"),
    )
    ledger.supplier_invoice_record(
        actor=carol,
        supplier=supplier,
        service="calls",
        period=october,
        reference="C-10",
        invoice_date=date(2026, 10, 31),
        amount=Decimal("0.05"),
    )
    return october


def close(period, actor, deficit_choice="", django_capture_on_commit_callbacks=None):
    closing.period_close_start(period=period, actor=actor, deficit_choice=deficit_choice)
    return closing.period_close_run(period_id=period.pk)


def test_preview_of_the_worked_example(worked_october):
    preview = closing.close_preview(period=worked_october)
    alice_lines = {
        (line.service, line.kind): (line.exact, line.amount)
        for line in preview.lines[min(preview.lines)]
    }
    assert alice_lines == {
        ("hosting", "disk"): (Decimal("0.433330"), Decimal("0.43")),
        ("hosting", "transfer"): (Decimal("0.033330"), Decimal("0.03")),
        ("calls", "call"): (Decimal("0.086100"), Decimal("0.09")),
    }
    assert preview.charges == Decimal("0.77")  # 0.55 + 0.22
    assert preview.cost_recovery == Decimal("0.769425")
    assert preview.rounding == Decimal("0.000575")
    assert preview.supplier_costs == Decimal("0.34")
    assert preview.result == Decimal("0.43")
    assert preview.parts == [Decimal("0.22"), Decimal("0.21")]
    assert preview.by_service == {
        "calls": (Decimal("0.086100"), Decimal("0.09")),
        "hosting": (Decimal("0.683325"), Decimal("0.68")),
    }


def test_close_posts_charges_splits_the_surplus_and_locks(
    worked_october, carol, django_capture_on_commit_callbacks
):
    alice, bob = Share.objects.order_by("id").values_list("user", flat=True)[:2]
    with django_capture_on_commit_callbacks(execute=True):  # runs the close task (eager)
        closing.period_close_start(period=worked_october, actor=carol)
    period = BillingPeriod.objects.get(pk=worked_october.pk)
    assert period.state == PeriodState.CLOSED
    assert (period.result, period.members, period.distributed) == (
        Decimal("0.43"),
        2,
        Decimal("0.43"),
    )
    assert period.per_head == Decimal("0.215")
    balances = dict(MemberBalance.objects.values_list("member_id", "posted"))
    assert balances[alice] == Decimal("1.00") - Decimal("0.55") + Decimal("0.22")
    assert balances[bob] == -Decimal("0.22") + Decimal("0.21")
    # Unbilled is what is left: bob's November usage.
    assert MemberBalance.objects.get(member_id=bob).unbilled == Decimal("1")
    assert MemberBalance.objects.get(member_id=alice).unbilled == 0
    lines = StatementLine.objects.filter(period=period)
    assert sum(line.amount for line in lines) == Decimal("0.77")
    debit, credit = ledger.ledger_totals()
    assert debit == credit
    # Income and expense are closed into the commune; what was not split (nothing) stays.
    assert AuditEntry.objects.filter(action="period.closed").exists()
    with pytest.raises(LedgerError, match="closed"):
        ledger.supplier_invoice_record(
            actor=carol,
            supplier=worked_october.invoices.first().supplier,
            service="hosting",
            period=period,
            reference="late",
            invoice_date=date(2026, 11, 1),
            amount=Decimal("1"),
        )


def test_close_can_run_again_after_a_crash(worked_october, carol):
    closing.period_close_start(period=worked_october, actor=carol)
    preview = closing.close_preview(period=worked_october)
    first_member = min(preview.lines)
    # A crash after the first member's charge: the retry skips it and finishes.
    from panel.models import User

    closing._charge_member(
        worked_october, User.objects.get(pk=first_member), preview.lines[first_member]
    )
    closing.period_close_run(period_id=worked_october.pk)
    closing.period_close_run(period_id=worked_october.pk)
    assert Transaction.objects.filter(kind=TransactionKind.USAGE_CHARGE).count() == 2
    assert StatementLine.objects.count() == 4
    assert BillingPeriod.objects.get(pk=worked_october.pk).result == Decimal("0.43")


def test_late_usage_is_charged_in_the_next_period_and_leaves_the_closed_one_alone(
    worked_october, carol, founders
):
    alice, _ = founders
    close(worked_october, carol)
    before = (
        BillingPeriod.objects.get(pk=worked_october.pk).result,
        sorted(StatementLine.objects.filter(period=worked_october).values_list("member", "amount")),
    )
    late = record(
        alice, "hosting", "disk", "2", "GB-month", "0.5", "late-october", when=at(2026, 10, 20)
    )
    assert late.period == worked_october
    after = (
        BillingPeriod.objects.get(pk=worked_october.pk).result,
        sorted(StatementLine.objects.filter(period=worked_october).values_list("member", "amount")),
    )
    assert after == before
    november = ledger.period_for(date(2026, 11, 1))
    preview = closing.close_preview(period=november)
    late_lines = [
        line for line in preview.lines[alice.pk] if line.belongs_to_id == worked_october.pk
    ]
    assert [(line.exact, line.amount) for line in late_lines] == [
        (Decimal("1.000000"), Decimal("1.00"))
    ]


@pytest.mark.parametrize("choice", ["reserve", "per_head"])
def test_a_deficit_is_covered_as_the_admin_chose(founders, carol, supplier, choice):
    alice, bob = founders
    september = ledger.period_for(date(2026, 9, 1))
    ledger.supplier_invoice_record(
        actor=carol,
        supplier=supplier,
        service="hosting",
        period=september,
        reference="S-9",
        invoice_date=date(2026, 9, 30),
        amount=Decimal("1.01"),
    )
    with pytest.raises(LedgerError, match="deficit: choose"):
        closing.period_close_start(period=september, actor=carol)
    close(september, carol, deficit_choice=choice)
    period = BillingPeriod.objects.get(pk=september.pk)
    assert period.result == Decimal("-1.01")
    assert period.deficit_choice == choice
    entry = AuditEntry.objects.get(action="period.close_started")
    assert entry.actor == carol
    assert (entry.after or {}).get("deficit_choice") == choice
    balances = dict(
        MemberBalance.objects.filter(member__in=[alice, bob]).values_list("member_id", "posted")
    )
    reserve = ledger.account_for(purpose=AccountPurpose.COMMUNE_RESERVE)
    reserve_debits = sum(leg.debit for leg in reserve.legs.all())
    if choice == "reserve":
        assert reserve_debits == Decimal("1.01")
        assert balances.get(alice.pk, 0) == balances.get(bob.pk, 0) == 0
    else:
        assert reserve_debits == 0
        assert balances == {alice.pk: Decimal("-0.51"), bob.pk: Decimal("-0.50")}


def test_periods_close_in_order_and_only_when_over(founders, carol):
    october = ledger.period_for(date(2026, 10, 1))
    ledger.period_for(date(2026, 9, 1))
    with pytest.raises(LedgerError, match="earlier periods first"):
        closing.period_close_start(period=october, actor=carol)
    november = ledger.period_for(timezone.localdate())
    with pytest.raises(LedgerError, match="has not ended"):
        closing.period_close_start(period=november, actor=carol)


def test_members_may_not_close(founders, alice):
    with pytest.raises(LedgerError, match="may not close"):
        closing.period_close_start(period=ledger.period_for(date(2026, 10, 1)), actor=alice)


def test_a_rerun_does_not_repeat_lines_of_free_usage(founders, carol):
    alice, _ = founders
    record(alice, "hosting", "disk", "5", "GB-month", "0", "free-disk", when=at(2026, 10, 3))
    october = ledger.period_for(date(2026, 10, 1))
    closing.period_close_start(period=october, actor=carol)
    preview = closing.close_preview(period=october)
    closing._charge_member(october, alice, preview.lines[alice.pk])
    closing.period_close_run(period_id=october.pk)
    assert StatementLine.objects.filter(member=alice).count() == 1
    assert BillingPeriod.objects.get(pk=october.pk).close_progress == 1
