from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from panel.models import BillingPeriod, Supplier, User
from panel.services import ledger


def at(year: int, month: int, day: int, hour: int = 12) -> datetime:
    return timezone.make_aware(datetime(year, month, day, hour))


def pay(member: User, amount: str, key: str, day: date | None = None) -> None:
    ledger.payment_record(
        actor=None,
        member=member,
        amount=Decimal(amount),
        received_on=day or timezone.localdate(),
        reference=f"test {key}",
        source_key=key,
    )


def use(member: User, amount: str, key: str, when: datetime, service: str = "hosting") -> None:
    ledger.record_usage(
        member=member,
        service=service,
        kind="disk",
        quantity=Decimal(1),
        unit="GB-month",
        unit_cost=Decimal(amount),
        cost_source="test price list",
        occurred_at=when,
        source_key=key,
    )


@pytest.fixture
def supplier(db: None) -> Supplier:
    return Supplier.objects.create(name="Hetzner")


@pytest.fixture
def october(db: None) -> BillingPeriod:
    return ledger.period_for(date(2026, 10, 1))
