"""Closing a billing period: charge usage at cost, close the books, split the result per head.

The close runs in a task. It starts by fixing the usage cutoff, so that a retry after a crash
charges exactly the same usage; each member's charge is its own transaction with a unique
source key (a retry skips what is done); the final step (closing entries, distribution, lock)
is one transaction guarded by the period's state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from django.db import connection, transaction
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from panel.audit import audit_record
from panel.models import (
    CENTS,
    ZERO,
    AccountPurpose,
    AccountType,
    BillingPeriod,
    DeficitChoice,
    Leg,
    MemberBalance,
    PeriodState,
    Share,
    StatementLine,
    SupplierInvoice,
    TransactionKind,
    UsageEvent,
    User,
)
from panel.services.ledger import (
    LedgerError,
    LegSpec,
    account_for,
    balance_for,
    cents,
    member_incoming_legs,
    member_outgoing_legs,
    post,
)
from panel.tasking import enqueue_on_commit


def split_equally(total: Decimal, parts: int) -> list[Decimal]:
    """Split whole cents into ``parts`` amounts that sum exactly and differ by at most a cent.

    Largest remainder: everyone gets the floor of the equal share; the cents left over go one
    each to the first members (in share order), since all remainders are equal.
    """
    if parts <= 0:
        return []
    if total != total.quantize(CENTS):
        raise LedgerError(f"{total} is not whole cents")
    units = int(total / CENTS)
    base, extra = divmod(units, parts)
    return [(base + (1 if i < extra else 0)) * CENTS for i in range(parts)]


def _aware(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def previous_close(period: BillingPeriod) -> BillingPeriod | None:
    return (
        BillingPeriod.objects.filter(starts_on__lt=period.starts_on, usage_cutoff__isnull=False)
        .order_by("-starts_on")
        .first()
    )


def billable_usage(period: BillingPeriod, cutoff: int) -> QuerySet[UsageEvent]:
    """Usage the close of ``period`` charges: before its end, up to the cutoff, not charged yet."""
    usage = UsageEvent.objects.filter(occurred_at__lt=_aware(period.ends_on), id__lte=cutoff)
    earlier = previous_close(period)
    if earlier is not None:
        usage = usage.exclude(occurred_at__lt=_aware(earlier.ends_on), id__lte=earlier.usage_cutoff)
    return usage


@dataclass
class Line:
    member_id: int
    service: str
    kind: str
    unit: str
    unit_cost: Decimal
    cost_source: str
    belongs_to_id: int
    quantity: Decimal
    events: int
    exact: Decimal

    @property
    def amount(self) -> Decimal:
        return cents(self.exact)


@dataclass
class ClosePreview:
    period: BillingPeriod
    cutoff: int
    lines: dict[int, list[Line]] = field(default_factory=dict)
    by_service: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    posted: dict[str, Decimal] = field(default_factory=dict)
    invoices: list[SupplierInvoice] = field(default_factory=list)
    members: list[int] = field(default_factory=list)

    @property
    def charges(self) -> Decimal:
        return sum((line.amount for lines in self.lines.values() for line in lines), ZERO)

    @property
    def cost_recovery(self) -> Decimal:
        pending = sum((line.exact for lines in self.lines.values() for line in lines), ZERO)
        return pending + self.posted.get(AccountPurpose.COST_RECOVERY, ZERO)

    @property
    def rounding(self) -> Decimal:
        pending = sum((line.amount - line.exact for ls in self.lines.values() for line in ls), ZERO)
        return pending + self.posted.get(AccountPurpose.ROUNDING, ZERO)

    @property
    def other_income(self) -> Decimal:
        return self.posted.get(AccountPurpose.OTHER_INCOME, ZERO)

    @property
    def supplier_costs(self) -> Decimal:
        return self.posted.get(AccountPurpose.SUPPLIER_COST, ZERO)

    @property
    def result(self) -> Decimal:
        """Surplus (positive) or deficit (negative) of the period."""
        return self.cost_recovery + self.rounding + self.other_income - self.supplier_costs

    @property
    def distributable(self) -> Decimal:
        if self.result > 0:
            return self.result.quantize(CENTS, rounding=ROUND_DOWN)
        return -(-self.result).quantize(CENTS, rounding=ROUND_UP)

    @property
    def parts(self) -> list[Decimal]:
        return split_equally(abs(self.distributable), len(self.members))


def members_during(period: BillingPeriod) -> list[int]:
    """Everyone who held a share at some moment of the period, in share order."""
    start, end = _aware(period.starts_on), _aware(period.ends_on)
    rows = (
        Share.objects.filter(issued_at__lt=end)
        .filter(Q(cancelled_at__isnull=True) | Q(cancelled_at__gte=start))
        .values("user_id")
        .annotate(first=Min("id"))
        .order_by("first", "user_id")
    )
    return [row["user_id"] for row in rows]


def posted_in(period: BillingPeriod) -> dict[str, Decimal]:
    """Net of income (credit) and expense (debit) accounts from the period's postings."""
    rows = (
        Leg.objects.filter(transaction__period=period)
        .exclude(transaction__kind=TransactionKind.PERIOD_CLOSE)
        .filter(account__type__in=[AccountType.INCOME, AccountType.EXPENSE])
        .values("account__purpose", "account__type")
        .annotate(d=Sum("debit"), c=Sum("credit"))
    )
    net: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for row in rows:
        if row["account__type"] == AccountType.INCOME:
            net[row["account__purpose"]] += row["c"] - row["d"]
        else:
            net[row["account__purpose"]] += row["d"] - row["c"]
    return dict(net)


def close_preview(*, period: BillingPeriod, cutoff: int | None = None) -> ClosePreview:
    """What closing ``period`` would charge and distribute (exact, given the cutoff)."""
    if cutoff is None:
        cutoff = period.usage_cutoff or UsageEvent.objects.aggregate(m=Max("id"))["m"] or 0
    preview = ClosePreview(period=period, cutoff=cutoff)
    rows = (
        billable_usage(period, cutoff)
        .values("member_id", "service", "kind", "unit", "unit_cost", "cost_source", "period_id")
        .annotate(quantity=Sum("quantity"), exact=Sum("amount"), events=Count("id"))
        .order_by("member_id", "service", "kind", "unit_cost", "period_id")
    )
    services: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for row in rows.iterator(chunk_size=5000):
        line = Line(
            member_id=row["member_id"],
            service=row["service"],
            kind=row["kind"],
            unit=row["unit"],
            unit_cost=row["unit_cost"],
            cost_source=row["cost_source"],
            belongs_to_id=row["period_id"],
            quantity=row["quantity"],
            events=row["events"],
            exact=row["exact"],
        )
        preview.lines.setdefault(line.member_id, []).append(line)
        services[line.service][0] += line.exact
        services[line.service][1] += line.amount
    preview.by_service = {k: (v[0], v[1]) for k, v in sorted(services.items())}
    preview.posted = posted_in(period)
    preview.invoices = list(
        SupplierInvoice.objects.filter(period=period).select_related("supplier")
    )
    preview.members = members_during(period)
    return preview


def why_not_closable(period: BillingPeriod) -> str:
    """Why ``period`` cannot be closed now, or "" when it can."""
    if period.state != PeriodState.OPEN:
        return f"period {period} is {period.state}"
    if timezone.localdate() < period.ends_on:
        return f"period {period} has not ended yet"
    earlier = BillingPeriod.objects.filter(starts_on__lt=period.starts_on)
    if earlier.exclude(state=PeriodState.CLOSED).exists():
        return "close the earlier periods first"
    return ""


def period_close_start(
    *, period: BillingPeriod, actor: User, deficit_choice: str = ""
) -> BillingPeriod:
    """Confirm the close: fix the usage cutoff, stop other postings, start the task."""
    if not actor.has_perm("panel.change_billingperiod"):
        raise LedgerError("you may not close billing periods")
    reason = why_not_closable(period)
    if reason:
        raise LedgerError(reason)
    if deficit_choice and deficit_choice not in DeficitChoice.values:
        raise LedgerError(f"unknown deficit choice {deficit_choice!r}")
    # The preview runs before the lock: new usage can only raise cost recovery, so a period
    # found without a deficit here cannot end in one.
    preview = close_preview(period=period)
    if preview.result < 0 and preview.members and not deficit_choice:
        raise LedgerError("the period ends in a deficit: choose how the commune covers it")
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Waits for usage inserts in flight to commit, so that no id below the cutoff can
            # still appear afterwards; held only for the few statements below.
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE panel_usageevent IN SHARE MODE")
        cutoff = UsageEvent.objects.aggregate(m=Max("id"))["m"] or 0
        started = BillingPeriod.objects.filter(pk=period.pk, state=PeriodState.OPEN).update(
            state=PeriodState.CLOSING,
            usage_cutoff=cutoff,
            deficit_choice=deficit_choice,
            closed_by=actor,
            close_progress=0,
            close_total=len(preview.lines),
            close_error="",
        )
        if not started:
            raise LedgerError(f"period {period} is already being closed")
        period.refresh_from_db()
        audit_record(
            actor=actor,
            action="period.close_started",
            obj=period,
            owner=None,
            after={
                "cutoff": cutoff,
                "result": preview.result,
                "deficit_choice": period.deficit_choice,
                "members": len(preview.members),
            },
        )
        from panel.tasks import close_period

        enqueue_on_commit(close_period, period.pk)
    return period


def period_close_run(*, period_id: int) -> BillingPeriod:
    """The close itself (run by the task); safe to run again after a crash."""
    period = BillingPeriod.objects.get(pk=period_id)
    if period.state == PeriodState.CLOSED:
        return period
    if period.state != PeriodState.CLOSING or period.usage_cutoff is None:
        raise LedgerError(f"period {period} is {period.state}; confirm the close first")
    preview = close_preview(period=period, cutoff=period.usage_cutoff)
    BillingPeriod.objects.filter(pk=period.pk).update(
        close_total=len(preview.lines), close_progress=0
    )
    members = {u.pk: u for u in User.objects.filter(pk__in=preview.lines)}
    for member_id in sorted(preview.lines):
        _charge_member(period, members[member_id], preview.lines[member_id])
    return _finish(period)


def _charge_member(period: BillingPeriod, member: User, lines: list[Line]) -> None:
    key = f"charge:{period}:{member.pk}"
    with transaction.atomic():
        balance_for(member)
        MemberBalance.objects.select_for_update().get(member=member)
        if StatementLine.objects.filter(period=period, member=member).exists():
            # Charged by an earlier run of this close (lines and charge commit together).
            BillingPeriod.objects.filter(pk=period.pk).update(
                close_progress=F("close_progress") + 1
            )
            return
        total = sum((line.amount for line in lines), ZERO)
        exact = sum((line.exact for line in lines), ZERO)
        txn = None
        if exact > 0 or total > 0:
            legs = member_outgoing_legs(member, total, memo=f"usage {period}")
            per_service: dict[str, Decimal] = defaultdict(lambda: ZERO)
            for line in lines:
                per_service[line.service] += line.exact
            legs += [
                LegSpec(
                    account_for(purpose=AccountPurpose.COST_RECOVERY, service=svc), credit=amount
                )
                for svc, amount in sorted(per_service.items())
                if amount > 0
            ]
            difference = total - exact
            rounding = account_for(purpose=AccountPurpose.ROUNDING)
            if difference > 0:
                legs.append(LegSpec(rounding, credit=difference, memo="statement rounding"))
            elif difference < 0:
                legs.append(LegSpec(rounding, debit=-difference, memo="statement rounding"))
            txn, _ = post(
                kind=TransactionKind.USAGE_CHARGE,
                source_key=key,
                legs=legs,
                period=period,
                description=f"Usage {period} of {member.email}",
            )
        StatementLine.objects.bulk_create(
            [
                StatementLine(
                    period=period,
                    member=member,
                    service=line.service,
                    kind=line.kind,
                    unit=line.unit,
                    unit_cost=line.unit_cost,
                    cost_source=line.cost_source,
                    belongs_to_id=line.belongs_to_id,
                    quantity=line.quantity,
                    events=line.events,
                    exact_amount=line.exact,
                    amount=line.amount,
                    transaction=txn,
                )
                for line in lines
            ]
        )
        MemberBalance.objects.filter(member=member).update(unbilled=F("unbilled") - exact)
        BillingPeriod.objects.filter(pk=period.pk).update(close_progress=F("close_progress") + 1)


def _finish(period: BillingPeriod) -> BillingPeriod:
    with transaction.atomic():
        period = BillingPeriod.objects.select_for_update().get(pk=period.pk)
        if period.state == PeriodState.CLOSED:
            return period
        # Every charge is posted by now: the result follows from the period's postings.
        preview = ClosePreview(
            period=period,
            cutoff=period.usage_cutoff or 0,
            posted=posted_in(period),
            members=members_during(period),
        )
        result = preview.result
        closing_legs = _closing_legs(period)
        undistributed = account_for(purpose=AccountPurpose.COMMUNE_UNDISTRIBUTED)
        if result > 0:
            closing_legs.append(LegSpec(undistributed, credit=result))
        elif result < 0:
            closing_legs.append(LegSpec(undistributed, debit=-result))
        if closing_legs:
            post(
                kind=TransactionKind.PERIOD_CLOSE,
                source_key=f"close:{period}",
                legs=closing_legs,
                period=period,
                description=f"Close of {period}: income and expense into the commune",
                actor=period.closed_by,
            )
        members = {u.pk: u for u in User.objects.filter(pk__in=preview.members)}
        parts = preview.parts
        if result > 0 and parts and preview.distributable > 0:
            legs = [LegSpec(undistributed, debit=preview.distributable)]
            legs += _per_head(
                members, preview.members, parts, member_incoming_legs, f"surplus {period}"
            )
            post(
                kind=TransactionKind.SURPLUS_DISTRIBUTION,
                source_key=f"surplus:{period}",
                legs=legs,
                period=period,
                description=f"Surplus of {period}, split among {len(parts)} members",
                actor=period.closed_by,
            )
        elif result < 0 and period.deficit_choice == DeficitChoice.RESERVE:
            post(
                kind=TransactionKind.PERIOD_CLOSE,
                source_key=f"reserve:{period}",
                legs=[
                    LegSpec(account_for(purpose=AccountPurpose.COMMUNE_RESERVE), debit=-result),
                    LegSpec(undistributed, credit=-result),
                ],
                period=period,
                description=f"Deficit of {period} drawn on the reserve",
                actor=period.closed_by,
            )
        elif result < 0 and period.deficit_choice == DeficitChoice.PER_HEAD and parts:
            legs = [LegSpec(undistributed, credit=-preview.distributable)]
            legs += _per_head(
                members, preview.members, parts, member_outgoing_legs, f"deficit {period}"
            )
            post(
                kind=TransactionKind.DEFICIT_CHARGE,
                source_key=f"deficit:{period}",
                legs=legs,
                period=period,
                description=f"Deficit of {period}, charged equally to {len(parts)} members",
                actor=period.closed_by,
            )
        closed = BillingPeriod.objects.filter(pk=period.pk, state=PeriodState.CLOSING).update(
            state=PeriodState.CLOSED,
            closed_at=timezone.now(),
            cost_recovery=preview.cost_recovery,
            other_income=preview.other_income + preview.rounding,
            supplier_costs=preview.supplier_costs,
            result=result,
            distributed=abs(preview.distributable) if parts else ZERO,
            members=len(preview.members),
            per_head=(abs(preview.distributable) / len(parts)).quantize(Decimal("0.000001"))
            if parts
            else ZERO,
        )
        if not closed:
            raise LedgerError(f"period {period} changed state while closing")
        period.refresh_from_db()
        audit_record(
            actor=period.closed_by,
            action="period.closed",
            obj=period,
            owner=None,
            after={"result": result, "members": period.members, "per_head": period.per_head},
        )
    return period


def _per_head(
    members: dict[int, User],
    order: list[int],
    parts: list[Decimal],
    legs_for: Callable[..., list[LegSpec]],
    memo: str,
) -> list[LegSpec]:
    """The members' side of a split: one part each, in share order."""
    legs: list[LegSpec] = []
    for member_id, part in zip(order, parts, strict=True):
        if part > 0:
            legs += legs_for(members[member_id], part, memo=memo)
    return legs


def _closing_legs(period: BillingPeriod) -> list[LegSpec]:
    """Zero every income and expense account for the period, by account."""
    rows = (
        Leg.objects.filter(transaction__period=period)
        .filter(account__type__in=[AccountType.INCOME, AccountType.EXPENSE])
        .values("account")
        .annotate(d=Sum("debit"), c=Sum("credit"))
    )
    from panel.models import Account

    accounts = Account.objects.in_bulk([row["account"] for row in rows])
    legs = []
    for row in rows:
        net = row["c"] - row["d"]  # credit-side net; income > 0, expense < 0 normally
        if net > 0:
            legs.append(LegSpec(accounts[row["account"]], debit=net))
        elif net < 0:
            legs.append(LegSpec(accounts[row["account"]], credit=-net))
    return legs
