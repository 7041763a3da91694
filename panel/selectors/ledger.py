"""Reads about money: balances, usage, statements, the commune's results, the trial balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from panel.models import (
    ZERO,
    Account,
    AccountType,
    BankImport,
    BillingPeriod,
    CostRate,
    CreditHold,
    HoldState,
    Leg,
    MemberBalance,
    Payment,
    PeriodState,
    Service,
    StatementLine,
    SupplierInvoice,
    TransactionKind,
    UsageEvent,
    User,
)


def balance_of(member: User) -> MemberBalance:
    """The member's balance; an unsaved zero balance when nothing was ever booked."""
    from panel.services.ledger import payment_reference_for

    return MemberBalance.objects.filter(member=member).first() or MemberBalance(
        member=member, payment_reference=payment_reference_for(member.pk)
    )


def open_holds(member: User) -> QuerySet[CreditHold]:
    return CreditHold.objects.filter(member=member, state=HoldState.HELD).order_by("expires_at")


@dataclass(frozen=True)
class DailySeries:
    service: str
    label: str
    days: list[tuple[date, Decimal]]
    total: Decimal

    @property
    def peak(self) -> Decimal:
        return max((amount for _, amount in self.days), default=ZERO)


def usage_by_day(member: User, *, days: int = 30) -> list[DailySeries]:
    """Per service, the cost of each of the last ``days`` days (zero days included)."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    rows = (
        UsageEvent.objects.filter(member=member, occurred_at__date__gte=first)
        .annotate(day=TruncDate("occurred_at"))
        .values("service", "day")
        .annotate(amount=Sum("amount"))
    )
    found: dict[str, dict[date, Decimal]] = {}
    for row in rows:
        found.setdefault(row["service"], {})[row["day"]] = row["amount"]
    series = []
    for service in Service:
        per_day = found.get(service.value, {})
        points = [
            (first + timedelta(days=i), per_day.get(first + timedelta(days=i), ZERO))
            for i in range(days)
        ]
        series.append(
            DailySeries(
                service.value, str(service.label), points, sum((a for _, a in points), ZERO)
            )
        )
    return series


def recent_usage(member: User, *, limit: int = 50) -> QuerySet[UsageEvent]:
    return (
        UsageEvent.objects.filter(member=member)
        .select_related("period")
        .order_by("-occurred_at", "-id")[:limit]
    )


@dataclass(frozen=True)
class StatementSummary:
    period: BillingPeriod
    lines: int
    total: Decimal


def statements_of(member: User) -> list[StatementSummary]:
    rows = (
        StatementLine.objects.filter(member=member)
        .values("period")
        .annotate(lines=Count("id"), total=Sum("amount"))
        .order_by("-period__starts_on")
    )
    periods = BillingPeriod.objects.in_bulk([row["period"] for row in rows])
    return [StatementSummary(periods[r["period"]], r["lines"], r["total"]) for r in rows]


def period_by_label(label: str) -> BillingPeriod:
    """A period from its 'YYYY-MM' label; a 404 for anything else."""
    try:
        year, month = (int(part) for part in label.split("-"))
        return BillingPeriod.objects.get(starts_on=date(year, month, 1))
    except (ValueError, BillingPeriod.DoesNotExist):
        raise Http404("no such period") from None


@dataclass(frozen=True)
class Statement:
    period: BillingPeriod
    member: User
    lines: list[StatementLine]
    total: Decimal
    share_of_result: Decimal  # the member's part of the surplus (+) or deficit charge (-)
    payments: list[Payment]


def statement_of(member: User, period: BillingPeriod) -> Statement:
    lines = list(
        StatementLine.objects.filter(member=member, period=period)
        .select_related("belongs_to")
        .order_by("service", "kind", "belongs_to__starts_on", "unit_cost")
    )
    if not lines and period.state != PeriodState.CLOSED:
        raise Http404("no statement for this period yet")
    member_legs = Leg.objects.filter(
        transaction__period=period,
        transaction__kind__in=[
            TransactionKind.SURPLUS_DISTRIBUTION,
            TransactionKind.DEFICIT_CHARGE,
        ],
        account__member=member,
    ).aggregate(c=Sum("credit"), d=Sum("debit"))
    payments = list(
        Payment.objects.filter(member=member, transaction__period=period).order_by("received_on")
    )
    return Statement(
        period=period,
        member=member,
        lines=lines,
        total=sum((line.amount for line in lines), ZERO),
        share_of_result=(member_legs["c"] or ZERO) - (member_legs["d"] or ZERO),
        payments=payments,
    )


@dataclass(frozen=True)
class CommuneYear:
    period: BillingPeriod
    supplier_costs: dict[str, Decimal]


def commune_results(*, limit: int = 24) -> list[CommuneYear]:
    """Closed periods with their supplier costs by service, for every member to see."""
    periods = list(
        BillingPeriod.objects.filter(state=PeriodState.CLOSED).order_by("-starts_on")[:limit]
    )
    costs = (
        Leg.objects.filter(
            transaction__period__in=periods,
            account__type=AccountType.EXPENSE,
        )
        .exclude(transaction__kind=TransactionKind.PERIOD_CLOSE)
        .values("transaction__period", "account__service")
        .annotate(d=Sum("debit"), c=Sum("credit"))
    )
    by_period: dict[int, dict[str, Decimal]] = {}
    for row in costs:
        by_period.setdefault(row["transaction__period"], {})[row["account__service"] or "other"] = (
            row["d"] - row["c"]
        )
    return [CommuneYear(p, by_period.get(p.pk, {})) for p in periods]


# Staff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRow:
    account: Account
    debit: Decimal
    credit: Decimal

    @property
    def balance(self) -> Decimal:
        return self.debit - self.credit


def trial_balance(
    *, as_of_period: BillingPeriod | None = None
) -> tuple[list[TrialRow], Decimal, Decimal]:
    legs = Leg.objects.all()
    if as_of_period is not None:
        legs = legs.filter(transaction__period__starts_on__lte=as_of_period.starts_on)
    sums = {
        row["account"]: row
        for row in legs.values("account").annotate(d=Sum("debit"), c=Sum("credit"))
    }
    accounts = Account.objects.filter(pk__in=sums).order_by("type", "code")
    rows = [TrialRow(a, sums[a.pk]["d"], sums[a.pk]["c"]) for a in accounts]
    return rows, sum((r.debit for r in rows), ZERO), sum((r.credit for r in rows), ZERO)


def periods_for_staff() -> QuerySet[BillingPeriod]:
    return BillingPeriod.objects.annotate(
        transactions_count=Count("transactions", distinct=True)
    ).order_by("-starts_on")


def recent_payments(*, limit: int = 50) -> QuerySet[Payment]:
    return Payment.objects.select_related("member", "transaction").order_by("-id")[:limit]


def recent_imports(*, limit: int = 10) -> QuerySet[BankImport]:
    return BankImport.objects.select_related("uploaded_by").order_by("-id")[:limit]


def invoices(*, limit: int = 100) -> QuerySet[SupplierInvoice]:
    return SupplierInvoice.objects.select_related("supplier", "period", "paid_by").order_by(
        "-invoice_date", "-id"
    )[:limit]


def open_periods() -> QuerySet[BillingPeriod]:
    return BillingPeriod.objects.filter(state=PeriodState.OPEN).order_by("starts_on")


def members_for_choice() -> QuerySet[User]:
    return (
        User.objects.filter(Q(shares__isnull=False) | Q(balance__isnull=False))
        .distinct()
        .order_by("email")
    )


def overlapping_cost_rates(
    *, service: str, kind: str, start: date, end: date | None
) -> QuerySet[CostRate]:
    """Rates of the same service and kind that share time with [start, end).

    An open-ended rate that starts earlier is not counted: a new rate ends it (cost_rate_set).
    """
    rates = CostRate.objects.filter(service=service, kind=kind)
    rates = rates.exclude(valid_to__isnull=True, valid_from__lt=start)
    rates = rates.filter(Q(valid_to__isnull=True) | Q(valid_to__gt=start))
    return rates.filter(valid_from__lt=end) if end else rates
