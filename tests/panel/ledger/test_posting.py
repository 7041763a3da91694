"""Double entry: what the code refuses, and what the database refuses by itself."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, connection, transaction

from panel.models import AccountPurpose, Leg, PeriodState, Transaction, TransactionKind
from panel.services import ledger
from panel.services.ledger import LedgerError, LegSpec


def bank():
    return ledger.account_for(purpose=AccountPurpose.BANK)


def reserve():
    return ledger.account_for(purpose=AccountPurpose.COMMUNE_RESERVE)


def test_balanced_transaction_is_posted_once(october):
    legs = [LegSpec(bank(), debit=Decimal("10.00")), LegSpec(reserve(), credit=Decimal("10.00"))]
    first, created = ledger.post(
        kind=TransactionKind.MEMBER_PAYMENT,
        source_key="t1",
        legs=legs,
        period=october,
        description="x",
    )
    again, created_again = ledger.post(
        kind=TransactionKind.MEMBER_PAYMENT,
        source_key="t1",
        legs=legs,
        period=october,
        description="x",
    )
    assert created
    assert not created_again
    assert first.pk == again.pk
    with pytest.raises(LedgerError, match="already posted"):
        ledger.post(
            kind=TransactionKind.MEMBER_PAYMENT,
            source_key="t1",
            legs=[LegSpec(bank(), debit=Decimal("11")), LegSpec(reserve(), credit=Decimal("11"))],
            period=october,
            description="x",
        )


@pytest.mark.parametrize(
    ("legs", "message"),
    [
        ([("bank", "10", "0"), ("reserve", "0", "9.99")], "does not balance"),
        ([("bank", "10", "10"), ("reserve", "0", "0")], "exactly one positive side"),
        ([("bank", "-1", "0"), ("reserve", "0", "-1")], "zero or more"),
        ([("bank", "0.0000001", "0"), ("reserve", "0", "0.0000001")], "more than 6 decimal"),
    ],
)
def test_code_refuses_bad_legs(october, legs, message):
    accounts = {"bank": bank(), "reserve": reserve()}
    specs = [LegSpec(accounts[a], debit=Decimal(d), credit=Decimal(c)) for a, d, c in legs]
    with pytest.raises(LedgerError, match=message):
        ledger.post(
            kind=TransactionKind.MEMBER_PAYMENT,
            source_key="bad",
            legs=specs,
            period=october,
            description="x",
        )


def test_floats_are_refused(october):
    with pytest.raises(LedgerError, match="must be a Decimal, not float"):
        ledger.post(
            kind=TransactionKind.MEMBER_PAYMENT,
            source_key="f",
            legs=[LegSpec(bank(), debit=0.1), LegSpec(reserve(), credit=0.1)],  # type: ignore[arg-type]
            period=october,
            description="x",
        )


@pytest.mark.django_db(transaction=True)
def test_database_rejects_an_unbalanced_transaction_at_commit(october):
    assert connection.vendor == "postgresql"
    with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
        txn = Transaction.objects.create(
            kind=TransactionKind.MEMBER_PAYMENT, source_key="raw", period=october, description="raw"
        )
        Leg.objects.create(transaction=txn, account=bank(), debit=Decimal("5"))
        Leg.objects.create(transaction=txn, account=reserve(), credit=Decimal("4"))
    assert not Transaction.objects.filter(source_key="raw").exists()


@pytest.mark.django_db(transaction=True)
def test_database_rejects_a_leg_added_later_that_unbalances(october):
    txn, _ = ledger.post(
        kind=TransactionKind.MEMBER_PAYMENT,
        source_key="later",
        legs=[LegSpec(bank(), debit=Decimal("1")), LegSpec(reserve(), credit=Decimal("1"))],
        period=october,
        description="x",
    )
    with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
        Leg.objects.create(transaction=txn, account=bank(), debit=Decimal("1"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("operation", ["update", "delete"])
def test_database_rejects_changes_to_posted_legs(october, operation):
    txn, _ = ledger.post(
        kind=TransactionKind.MEMBER_PAYMENT,
        source_key=f"imm-{operation}",
        legs=[LegSpec(bank(), debit=Decimal("3")), LegSpec(reserve(), credit=Decimal("3"))],
        period=october,
        description="x",
    )
    legs = Leg.objects.filter(transaction=txn)
    with (
        pytest.raises((IntegrityError, InternalError), match="never changed or deleted"),
        transaction.atomic(),
    ):
        if operation == "update":
            legs.update(debit=Decimal("4"))
        else:
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM panel_leg WHERE transaction_id = %s", [txn.pk])
    assert sorted(Leg.objects.filter(transaction=txn).values_list("debit", "credit")) == [
        (Decimal("0"), Decimal("3")),
        (Decimal("3"), Decimal("0")),
    ]


@pytest.mark.django_db(transaction=True)
def test_database_rejects_postings_into_a_closed_period(october):
    from django.utils import timezone

    from panel.models import BillingPeriod

    BillingPeriod.objects.filter(pk=october.pk).update(
        state=PeriodState.CLOSED, closed_at=timezone.now()
    )
    with pytest.raises(IntegrityError, match="closed"), transaction.atomic():
        Transaction.objects.create(
            kind=TransactionKind.MEMBER_PAYMENT, source_key="late", period=october, description="x"
        )
    october.refresh_from_db()
    with pytest.raises(LedgerError, match="closed"):
        ledger.post(
            kind=TransactionKind.MEMBER_PAYMENT,
            source_key="late2",
            legs=[LegSpec(bank(), debit=Decimal("1")), LegSpec(reserve(), credit=Decimal("1"))],
            period=october,
            description="x",
        )


def test_reversal_mirrors_and_happens_once(october, carol):
    txn, _ = ledger.post(
        kind=TransactionKind.MEMBER_PAYMENT,
        source_key="rev",
        legs=[LegSpec(bank(), debit=Decimal("7.50")), LegSpec(reserve(), credit=Decimal("7.50"))],
        period=october,
        description="x",
    )
    reversal = ledger.transaction_reverse(txn=txn, actor=carol, reason="typo")
    assert reversal.reverses == txn
    assert sorted(reversal.legs.values_list("account__code", "debit", "credit")) == [
        ("bank", Decimal("0"), Decimal("7.50")),
        ("commune:reserve", Decimal("7.50"), Decimal("0")),
    ]
    with pytest.raises(LedgerError, match="already reversed"):
        ledger.transaction_reverse(txn=txn, actor=carol, reason="again")
    assert ledger.ledger_totals()[0] == ledger.ledger_totals()[1]
