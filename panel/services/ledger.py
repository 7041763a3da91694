"""The books: accounts, postings, reversals, usage, holds, payments, supplier invoices, rates.

Every service of the co-op reports usage through :func:`record_usage` (or its batch form);
nothing else writes usage. Money is Decimal; a float anywhere is refused, not converted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from panel.audit import audit_record, snapshot
from panel.db import bound_cursor
from panel.models import (
    CENTS,
    PURPOSE_TYPE,
    ZERO,
    Account,
    AccountPurpose,
    BillingPeriod,
    CostRate,
    CreditHold,
    HoldState,
    Leg,
    MemberBalance,
    Payment,
    PeriodState,
    Service,
    Supplier,
    SupplierInvoice,
    Transaction,
    TransactionKind,
    UsageEvent,
    User,
)
from panel.models.ledger import MONEY_DIGITS, MONEY_PLACES

EXACT = Decimal("0.000001")
SOURCE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/@+-]{0,199}$")
KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,49}$")
UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,29}$")


class LedgerError(Exception):
    """A ledger action that cannot be done; the message says what and why, for people."""


class InsufficientCredit(LedgerError):
    pass


class UsageConflict(LedgerError):
    """The same usage source key arrived again with a different payload."""


# Money --------------------------------------------------------------------------------------


def money(value: Any, what: str, *, positive: bool = False, allow_zero: bool = True) -> Decimal:
    """A Decimal with 6 places, or a LedgerError naming ``what``. Floats are refused."""
    if isinstance(value, float) or not isinstance(value, Decimal | int | str):
        raise LedgerError(f"{what} must be a Decimal, not {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise LedgerError(f"{what} {value!r} is not a number") from None
    if not amount.is_finite():
        raise LedgerError(f"{what} {value!r} is not a finite number")
    if amount and amount.adjusted() >= MONEY_DIGITS - MONEY_PLACES:
        # Beyond what an amount column holds (and what quantize can compute).
        raise LedgerError(f"{what} {value} is too large")
    if amount != amount.quantize(EXACT, rounding=ROUND_HALF_EVEN):
        raise LedgerError(f"{what} {value} has more than 6 decimal places")
    if amount < 0 or (positive and amount == 0) or (not allow_zero and amount == 0):
        raise LedgerError(f"{what} must be {'positive' if positive else 'zero or more'}: {value}")
    return amount.quantize(EXACT)


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENTS, rounding=ROUND_HALF_EVEN)


# Periods ------------------------------------------------------------------------------------


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def local_date(moment: datetime) -> date:
    if timezone.is_naive(moment):
        raise LedgerError(f"time {moment.isoformat()} has no time zone")
    return timezone.localtime(moment).date()


# Money moves on days the co-op keeps books for. A date before 2000 (0026 typed for 2026) or
# more than a year ahead is a typo: it would open a month that no close ever reaches, and at
# the calendar's end one whose next month cannot be computed.
FIRST_BOOKING_DAY = date(2000, 1, 1)


def booking_days() -> tuple[date, date]:
    """The first and last day a payment may be dated."""
    return FIRST_BOOKING_DAY, timezone.localdate() + timedelta(days=366)


def period_for(day: date) -> BillingPeriod:
    """The month that contains ``day``, created on first use."""
    start = _month_start(day)
    period, _ = BillingPeriod.objects.get_or_create(
        starts_on=start, defaults={"ends_on": _next_month(start)}
    )
    return period


def posting_period(day: date) -> BillingPeriod:
    """Where a posting dated ``day`` goes: its own month, or the first open one after it."""
    period = period_for(day)
    while period.state != PeriodState.OPEN:
        period = period_for(period.ends_on)
    return period


# Accounts -----------------------------------------------------------------------------------

SINGLETONS = {
    AccountPurpose.BANK: ("bank", "Bank"),
    AccountPurpose.COMMUNE_UNDISTRIBUTED: ("commune:undistributed", "Commune, undistributed"),
    AccountPurpose.COMMUNE_RESERVE: ("commune:reserve", "Commune reserve"),
    AccountPurpose.ROUNDING: ("rounding", "Rounding differences"),
    AccountPurpose.OTHER_INCOME: ("income:other", "Other income"),
}


def account_for(
    *,
    purpose: AccountPurpose,
    member: User | None = None,
    supplier: Supplier | None = None,
    service: str = "",
) -> Account:
    """The one account for a purpose and its owner, created on first use."""
    defaults: dict[str, Any] = {"type": PURPOSE_TYPE[purpose], "purpose": purpose}
    if purpose in SINGLETONS:
        code, name = SINGLETONS[purpose]
    elif purpose in (AccountPurpose.MEMBER_CREDIT, AccountPurpose.MEMBER_RECEIVABLE):
        if member is None:
            raise LedgerError(f"{purpose} needs a member")
        suffix = "credit" if purpose == AccountPurpose.MEMBER_CREDIT else "receivable"
        code, name = f"member:{member.pk}:{suffix}", f"{member.email}, {suffix}"
        defaults["member"] = member
    elif purpose == AccountPurpose.SUPPLIER_PAYABLE:
        if supplier is None:
            raise LedgerError("a payable account needs a supplier")
        code, name = f"supplier:{supplier.pk}:payable", f"{supplier.name}, payable"
        defaults["supplier"] = supplier
    else:
        if service not in Service.values:
            raise LedgerError(f"unknown service {service!r}")
        suffix = "cost recovery" if purpose == AccountPurpose.COST_RECOVERY else "supplier cost"
        code, name = f"service:{service}:{purpose}", f"{Service(service).label}, {suffix}"
        defaults["service"] = service
    account, _ = Account.objects.get_or_create(code=code, defaults={"name": name, **defaults})
    return account


def payment_reference_for(member_id: int) -> str:
    return f"CP{member_id:06d}"


def balance_for(member: User) -> MemberBalance:
    balance, _ = MemberBalance.objects.get_or_create(
        member=member, defaults={"payment_reference": payment_reference_for(member.pk)}
    )
    return balance


# Posting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegSpec:
    account: Account
    debit: Decimal = ZERO
    credit: Decimal = ZERO
    memo: str = ""


def _signature(legs: Iterable[tuple[int, Decimal, Decimal]]) -> list[tuple[int, str, str]]:
    return sorted((a, str(d.quantize(EXACT)), str(c.quantize(EXACT))) for a, d, c in legs)


def post(
    *,
    kind: TransactionKind,
    source_key: str,
    legs: Sequence[LegSpec],
    period: BillingPeriod,
    description: str,
    actor: User | None = None,
    reverses: Transaction | None = None,
) -> tuple[Transaction, bool]:
    """Post one balanced transaction; returns it and whether it is new.

    The same (kind, source key) with the same legs is a no-op; with other legs it is refused.
    Balancing is checked here for a clear message, and again by the database at commit.
    """
    if not SOURCE_KEY.match(source_key):
        raise LedgerError(f"source key {source_key!r} does not match {SOURCE_KEY.pattern}")
    merged: dict[tuple[int, str], LegSpec] = {}
    for leg in legs:
        debit, credit = money(leg.debit, "debit"), money(leg.credit, "credit")
        if (debit > 0) == (credit > 0):
            raise LedgerError("a leg has exactly one positive side, debit or credit")
        key = (leg.account.pk, "debit" if debit else "credit")
        if key in merged:
            prev = merged[key]
            merged[key] = LegSpec(leg.account, prev.debit + debit, prev.credit + credit, prev.memo)
        else:
            merged[key] = LegSpec(leg.account, debit, credit, leg.memo)
    clean = list(merged.values())
    total_debit = sum((leg.debit for leg in clean), ZERO)
    total_credit = sum((leg.credit for leg in clean), ZERO)
    if len(clean) < 2 or total_debit != total_credit:
        raise LedgerError(
            f"transaction {kind}:{source_key} does not balance "
            f"(debit {total_debit}, credit {total_credit}, {len(clean)} legs)"
        )
    with transaction.atomic():
        if period.state == PeriodState.CLOSED:
            raise LedgerError(f"period {period} is closed; nothing may be posted into it")
        try:
            with transaction.atomic():
                txn = Transaction.objects.create(
                    kind=kind,
                    source_key=source_key,
                    period=period,
                    description=description[:300],
                    actor=actor,
                    reverses=reverses,
                )
        except IntegrityError:
            existing = Transaction.objects.filter(kind=kind, source_key=source_key).first()
            if existing is None:
                raise
            old = _signature(existing.legs.values_list("account_id", "debit", "credit"))
            new = _signature((leg.account.pk, leg.debit, leg.credit) for leg in clean)
            if old != new:
                raise LedgerError(
                    f"source key {source_key!r} was already posted as {kind} with other amounts"
                ) from None
            return existing, False
        Leg.objects.bulk_create(
            [
                Leg(
                    transaction=txn,
                    account=leg.account,
                    debit=leg.debit,
                    credit=leg.credit,
                    memo=leg.memo,
                )
                for leg in clean
            ]
        )
        _follow_member_balances(clean)
    return txn, True


def _follow_member_balances(legs: Sequence[LegSpec]) -> None:
    """Keep MemberBalance.posted equal to credit minus receivable, in the same transaction."""
    deltas: dict[int, Decimal] = {}
    for leg in legs:
        if leg.account.purpose in (AccountPurpose.MEMBER_CREDIT, AccountPurpose.MEMBER_RECEIVABLE):
            member_id = leg.account.member_id
            assert member_id is not None  # noqa: S101  (member accounts always have one)
            deltas[member_id] = deltas.get(member_id, ZERO) + leg.credit - leg.debit
    for member_id, delta in sorted(deltas.items()):
        MemberBalance.objects.filter(member_id=member_id).update(posted=F("posted") + delta)


def member_incoming_legs(member: User, amount: Decimal, memo: str = "") -> list[LegSpec]:
    """Money for a member (payment, surplus): settles what they owe first, then credit."""
    balance = balance_for(member)
    owed = max(-balance.posted, ZERO)
    legs = []
    to_receivable = min(owed, amount)
    if to_receivable > 0:
        legs.append(
            LegSpec(
                account_for(purpose=AccountPurpose.MEMBER_RECEIVABLE, member=member),
                credit=to_receivable,
                memo=memo,
            )
        )
    if amount - to_receivable > 0:
        legs.append(
            LegSpec(
                account_for(purpose=AccountPurpose.MEMBER_CREDIT, member=member),
                credit=amount - to_receivable,
                memo=memo,
            )
        )
    return legs


def member_outgoing_legs(member: User, amount: Decimal, memo: str = "") -> list[LegSpec]:
    """A charge to a member: from prepaid credit while it lasts, the rest is owed."""
    balance = balance_for(member)
    available = max(balance.posted, ZERO)
    legs = []
    from_credit = min(available, amount)
    if from_credit > 0:
        legs.append(
            LegSpec(
                account_for(purpose=AccountPurpose.MEMBER_CREDIT, member=member),
                debit=from_credit,
                memo=memo,
            )
        )
    if amount - from_credit > 0:
        legs.append(
            LegSpec(
                account_for(purpose=AccountPurpose.MEMBER_RECEIVABLE, member=member),
                debit=amount - from_credit,
                memo=memo,
            )
        )
    return legs


@transaction.atomic
def transaction_reverse(*, txn: Transaction, actor: User, reason: str) -> Transaction:
    """Correct a posting by its mirror image; the original stays, at most one reversal each."""
    if not reason.strip():
        raise LedgerError("say why the transaction is reversed")
    if txn.kind == TransactionKind.REVERSAL:
        raise LedgerError("a reversal is not reversed; post a new transaction instead")
    legs = [
        LegSpec(leg.account, debit=leg.credit, credit=leg.debit, memo=f"reversal of {txn.pk}")
        for leg in txn.legs.select_related("account")
    ]
    for leg in legs:
        if leg.account.member_id:
            balance_for(leg.account.member)  # type: ignore[arg-type]
    try:
        with transaction.atomic():
            reversal, created = post(
                kind=TransactionKind.REVERSAL,
                source_key=f"reversal:{txn.pk}",
                legs=legs,
                period=posting_period(timezone.localdate()),
                description=f"Reversal of {txn}: {reason}",
                actor=actor,
                reverses=txn,
            )
    except IntegrityError:
        created = False
    if not created:
        raise LedgerError(f"transaction {txn.pk} was already reversed")
    audit_record(
        actor=actor,
        action="ledger.reversed",
        obj=reversal,
        owner=next((leg.account.member for leg in legs if leg.account.member_id), None),
        after={"reverses": txn.pk, "kind": txn.kind, "source_key": txn.source_key},
        note=reason,
    )
    return reversal


# Usage --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageInput:
    member_id: int
    service: str
    kind: str
    quantity: Decimal
    unit: str
    unit_cost: Decimal
    cost_source: str
    occurred_at: datetime
    source_key: str
    cost_rate_id: int | None = None


@dataclass(frozen=True)
class RatedUsage:
    event: UsageInput
    amount: Decimal
    payload_hash: str
    period_id: int


def _rate(event: UsageInput, periods: dict[date, BillingPeriod]) -> RatedUsage:
    amount, payload_hash, month = _checked(event)
    if month not in periods:
        periods[month] = period_for(month)
    return RatedUsage(
        event=event, amount=amount, payload_hash=payload_hash, period_id=periods[month].pk
    )


_SERVICES = frozenset(Service.values)  # Service.values builds a new list on every use


def _checked(event: UsageInput) -> tuple[Decimal, str, date]:
    """A usage event validated: its amount, payload hash and the month it belongs to."""
    if event.service not in _SERVICES:
        raise LedgerError(f"unknown service {event.service!r}; one of {Service.values}")
    if not KIND.match(event.kind):
        raise LedgerError(f"usage kind {event.kind!r} does not match {KIND.pattern}")
    if not UNIT.match(event.unit):
        raise LedgerError(f"unit {event.unit!r} does not match {UNIT.pattern}")
    if not SOURCE_KEY.match(event.source_key):
        raise LedgerError(f"source key {event.source_key!r} does not match {SOURCE_KEY.pattern}")
    if not event.cost_source.strip():
        raise LedgerError("every usage names the source of its cost")
    quantity = money(event.quantity, "quantity")
    unit_cost = money(event.unit_cost, "unit cost")
    month = _month_start(local_date(event.occurred_at))
    payload = json.dumps(
        [
            event.member_id,
            event.service,
            event.kind,
            str(quantity),
            event.unit,
            str(unit_cost),
            event.cost_source,
            event.occurred_at.astimezone(UTC).isoformat(),
        ]
    )
    return (
        (quantity * unit_cost).quantize(EXACT, rounding=ROUND_HALF_EVEN),
        hashlib.sha256(payload.encode()).hexdigest(),
        month,
    )


def record_usage(
    *,
    member: User,
    service: str,
    kind: str,
    quantity: Decimal,
    unit: str,
    unit_cost: Decimal,
    cost_source: str | CostRate,
    occurred_at: datetime,
    source_key: str,
) -> UsageEvent:
    """Record one use of a service at cost. The one way services report usage.

    A repeated source key with the same payload returns the first event; with a different
    payload it raises UsageConflict. ``cost_source`` is a CostRate or a text that says where
    the unit cost comes from (a rate deck row, a supplier's price list).
    """
    rate = cost_source if isinstance(cost_source, CostRate) else None
    label = rate.source_label if rate else str(cost_source)
    usage = UsageInput(
        member_id=member.pk,
        service=service,
        kind=kind,
        quantity=quantity,
        unit=unit,
        unit_cost=unit_cost,
        cost_source=label,
        occurred_at=occurred_at,
        source_key=source_key,
        cost_rate_id=rate.pk if rate else None,
    )
    rated = _rate(usage, {})
    with transaction.atomic():
        balance_for(member)
        try:
            with transaction.atomic():
                event = UsageEvent.objects.create(**_event_fields(rated))
        except IntegrityError:
            existing = UsageEvent.objects.get(service=service, source_key=source_key)
            if existing.payload_hash != rated.payload_hash:
                raise UsageConflict(
                    f"usage {service}:{source_key} was already recorded with another payload"
                ) from None
            return existing
        MemberBalance.objects.filter(member=member).update(unbilled=F("unbilled") + rated.amount)
    return event


def _event_fields(rated: RatedUsage) -> dict[str, Any]:
    e = rated.event
    return {
        "member_id": e.member_id,
        "service": e.service,
        "kind": e.kind,
        "quantity": money(e.quantity, "quantity"),
        "unit": e.unit,
        "unit_cost": money(e.unit_cost, "unit cost"),
        "amount": rated.amount,
        "cost_source": e.cost_source[:300],
        "cost_rate_id": e.cost_rate_id,
        "occurred_at": e.occurred_at,
        "source_key": e.source_key,
        "payload_hash": rated.payload_hash,
        "period_id": rated.period_id,
    }


@dataclass(frozen=True)
class BatchResult:
    inserted: int
    duplicates: int


class UsageBatchError(LedgerError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems[:20]) + (" …" if len(problems) > 20 else ""))


_STAGE_COLUMNS = [
    "member_id",
    "service",
    "kind",
    "quantity",
    "unit",
    "unit_cost",
    "amount",
    "cost_source",
    "cost_rate_id",
    "occurred_at",
    "source_key",
    "payload_hash",
    "period_id",
]


def record_usage_batch(*, events: Sequence[UsageInput]) -> BatchResult:
    """Record many usage events at once (call records, meter readings), all or none.

    Same rules as record_usage per event. On PostgreSQL the rows go through COPY into a
    staging table and one INSERT ... ON CONFLICT; the members' unbilled totals are updated
    with one statement. Member balance rows are locked in id order first, the same order the
    period close uses, so that batches and closes never deadlock.
    """
    periods: dict[date, BillingPeriod] = {}
    rated: list[RatedUsage] = []
    problems: list[str] = []
    for index, event in enumerate(events):
        try:
            rated.append(_rate(event, periods))
        except LedgerError as exc:
            problems.append(f"event {index + 1} ({event.source_key!r}): {exc}")
    if problems:
        raise UsageBatchError(problems)
    if not rated:
        return BatchResult(0, 0)
    member_ids = sorted({r.event.member_id for r in rated})
    with transaction.atomic():
        MemberBalance.objects.bulk_create(
            [
                MemberBalance(member_id=m, payment_reference=payment_reference_for(m))
                for m in member_ids
            ],
            ignore_conflicts=True,
        )
        list(
            MemberBalance.objects.select_for_update()
            .filter(member_id__in=member_ids)
            .order_by("member_id")
            .values_list("member_id", flat=True)
        )
        if connection.vendor == "postgresql":
            inserted = _batch_postgres(rated)
        else:
            inserted = _batch_generic(rated)
    return BatchResult(inserted, len(rated) - inserted)


def _batch_postgres(rated: list[RatedUsage]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TEMP TABLE IF NOT EXISTS panel_usage_stage (
                member_id bigint, service text, kind text, quantity numeric, unit text,
                unit_cost numeric, amount numeric, cost_source text, cost_rate_id bigint,
                occurred_at timestamptz, source_key text, payload_hash text, period_id bigint
            ) ON COMMIT DELETE ROWS
            """
        )
        columns = ", ".join(_STAGE_COLUMNS)
        raw = cursor.cursor  # psycopg's own cursor, for COPY
        with raw.copy(f"COPY panel_usage_stage ({columns}) FROM STDIN") as copy:
            for r in rated:
                e = r.event
                copy.write_row(
                    (
                        e.member_id,
                        e.service,
                        e.kind,
                        e.quantity,
                        e.unit,
                        e.unit_cost,
                        r.amount,
                        e.cost_source[:300],
                        e.cost_rate_id,
                        e.occurred_at,
                        e.source_key,
                        r.payload_hash,
                        r.period_id,
                    )
                )
        cursor.execute(
            f"""
            WITH ins AS (
                INSERT INTO panel_usageevent ({columns}, recorded_at)
                SELECT {columns}, now() FROM panel_usage_stage
                ON CONFLICT (service, source_key) DO NOTHING
                RETURNING member_id, amount
            ), per_member AS (
                SELECT member_id, SUM(amount) AS total, COUNT(*) AS n FROM ins GROUP BY member_id
            ), upd AS (
                UPDATE panel_memberbalance b SET unbilled = b.unbilled + p.total
                FROM per_member p WHERE b.member_id = p.member_id
                RETURNING p.n
            )
            SELECT COALESCE(SUM(n), 0) FROM upd
            """  # noqa: S608  (column names are constants of this module)
        )
        inserted = int(cursor.fetchone()[0])
        cursor.execute(
            """
            SELECT s.service, s.source_key FROM panel_usage_stage s
            JOIN panel_usageevent e ON e.service = s.service AND e.source_key = s.source_key
            WHERE e.payload_hash <> s.payload_hash LIMIT 20
            """
        )
        conflicts = cursor.fetchall()
        cursor.execute("TRUNCATE panel_usage_stage")
    if conflicts:
        raise UsageBatchError(
            [
                f"usage {service}:{key} was already recorded with another payload"
                for service, key in conflicts
            ]
        )
    return inserted


def _batch_generic(rated: list[RatedUsage]) -> int:
    keys: dict[tuple[str, str], str] = {}
    problems = []
    for r in rated:
        key = (r.event.service, r.event.source_key)
        if keys.setdefault(key, r.payload_hash) != r.payload_hash:
            problems.append(f"usage {key[0]}:{key[1]} appears twice with different payloads")
    existing = {
        (service, key): digest
        for service, key, digest in UsageEvent.objects.filter(
            source_key__in=[k for _, k in keys]
        ).values_list("service", "source_key", "payload_hash")
        if (service, key) in keys
    }
    problems += [
        f"usage {s}:{k} was already recorded with another payload"
        for (s, k), digest in existing.items()
        if keys[(s, k)] != digest
    ]
    if problems:
        raise UsageBatchError(problems)
    fresh, seen = [], set(existing)
    for r in rated:
        key = (r.event.service, r.event.source_key)
        if key not in seen:
            seen.add(key)
            fresh.append(r)
    UsageEvent.objects.bulk_create([UsageEvent(**_event_fields(r)) for r in fresh], batch_size=500)
    totals: dict[int, Decimal] = {}
    for r in fresh:
        totals[r.event.member_id] = totals.get(r.event.member_id, ZERO) + r.amount
    for member_id, total in sorted(totals.items()):
        MemberBalance.objects.filter(member_id=member_id).update(unbilled=F("unbilled") + total)
    return len(fresh)


# Holds --------------------------------------------------------------------------------------


def credit_hold(
    *,
    member: User,
    amount: Decimal,
    key: str,
    expires_at: datetime,
    service: str = Service.CALLS,
) -> CreditHold:
    """Reserve ``amount`` of the member's available credit, or raise InsufficientCredit.

    The check and the reservation are one guarded UPDATE on the member's balance row, so
    concurrent holds can never together exceed what is available. On PostgreSQL the update
    and the hold's insert are one statement (call setup waits for it); a repeated key with
    the same member and amount returns the first hold.
    """
    amount = money(amount, "hold amount", positive=True)
    if not SOURCE_KEY.match(key):
        raise LedgerError(f"hold key {key!r} does not match {SOURCE_KEY.pattern}")
    if service not in Service.values:
        raise LedgerError(f"unknown service {service!r}")
    for _ in range(2):
        hold_id = _reserve(member, amount, key, expires_at, service)
        if hold_id is not None:
            return CreditHold(
                pk=hold_id,
                member=member,
                key=key,
                service=service,
                amount=amount,
                state=HoldState.HELD,
                expires_at=expires_at,
            )
        existing = CreditHold.objects.filter(key=key).first()
        if existing is not None:
            if existing.member_id == member.pk and existing.amount == amount:
                return existing
            raise LedgerError(f"hold key {key!r} is already used for another hold")
        if not MemberBalance.objects.filter(member=member).exists():
            balance_for(member)  # the first money movement of this member: try again
            continue
        break
    raise InsufficientCredit(f"the available credit does not cover {amount}")


def _reserve(
    member: User, amount: Decimal, key: str, expires_at: datetime, service: str
) -> int | None:
    """The guarded UPDATE and the insert of the hold: the new hold's id, or None."""
    if connection.vendor == "postgresql":
        # One statement, atomic by itself; inside a transaction, a savepoint keeps a clash of
        # the same key at the same moment from spoiling the caller's transaction.
        guard = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        try:
            with guard, connection.cursor() as cursor:
                cursor.execute(
                    """
                    WITH reserved AS (
                        UPDATE panel_memberbalance SET held = held + %(amount)s
                        WHERE member_id = %(member)s
                          AND posted >= unbilled + held + %(amount)s
                          AND NOT EXISTS (SELECT 1 FROM panel_credithold WHERE key = %(key)s)
                        RETURNING member_id
                    )
                    INSERT INTO panel_credithold
                        (member_id, key, service, amount, state, created_at, expires_at)
                    SELECT member_id, %(key)s, %(service)s, %(amount)s, 'held', now(), %(expires)s
                    FROM reserved
                    RETURNING id
                    """,
                    {
                        "amount": amount,
                        "member": member.pk,
                        "key": key,
                        "service": service,
                        "expires": expires_at,
                    },
                )
                row = cursor.fetchone()
        except IntegrityError:
            # The same key at the same moment: the statement (update included) did nothing.
            return None
        return int(row[0]) if row else None
    with transaction.atomic():
        if CreditHold.objects.filter(key=key).exists():
            return None
        reserved = MemberBalance.objects.filter(
            member=member, posted__gte=F("unbilled") + F("held") + amount
        ).update(held=F("held") + amount)
        if not reserved:
            return None
        hold = CreditHold.objects.create(
            member=member, key=key, service=service, amount=amount, expires_at=expires_at
        )
    return hold.pk


def credit_settle(
    *,
    key: str,
    amount: Decimal,
    kind: str = "hold",
    quantity: Decimal | None = None,
    unit: str = "item",
    unit_cost: Decimal | None = None,
    cost_source: str = "",
    occurred_at: datetime | None = None,
    holder: tuple[int, str] | None = None,
) -> CreditHold:
    """Charge the actual ``amount`` of a hold as usage and free the rest.

    A hold that expired (its credit freed by ``release_expired_holds``) can still be
    settled: what it reserved for happened all the same (a call whose hangup arrived late),
    so it is charged, once, and the freed credit is not freed twice. A released hold cannot.

    The usage line defaults to one item at ``amount``; a service may describe it exactly
    (e.g. 3.5 minutes at a rate), as long as quantity times unit cost is the amount.
    ``holder``, the member id and service of the hold, spares reading the hold first when
    the caller knows them (it took the hold); they are checked against the hold all the same.
    """
    amount = money(amount, "settled amount")
    if connection.vendor == "postgresql":
        done = _settle_in_one_statement(
            key=key,
            holder=holder,
            amount=amount,
            kind=kind,
            quantity=quantity,
            unit=unit,
            unit_cost=unit_cost,
            cost_source=cost_source,
            occurred_at=occurred_at,
        )
        if done is not None:
            return done
    with transaction.atomic():
        hold = CreditHold.objects.select_related("member").get(key=key)
        if amount > hold.amount:
            raise LedgerError(f"hold {key!r} covers {hold.amount}, not {amount}")
        settled = CreditHold.objects.filter(pk=hold.pk, state=HoldState.HELD).update(
            state=HoldState.SETTLED, settled_amount=amount, ended_at=timezone.now()
        )
        if settled:
            MemberBalance.objects.filter(member=hold.member).update(held=F("held") - hold.amount)
        else:
            # An expired hold freed its credit already; what it was for may still have
            # happened (a call whose hangup came late), and is charged all the same, once.
            settled = CreditHold.objects.filter(pk=hold.pk, state=HoldState.EXPIRED).update(
                state=HoldState.SETTLED, settled_amount=amount, ended_at=timezone.now()
            )
        if not settled:
            if hold.state == HoldState.SETTLED and hold.settled_amount == amount:
                return hold
            raise LedgerError(f"hold {key!r} is {hold.state}, it cannot be settled")
        if amount > 0:
            if quantity is None or unit_cost is None:
                quantity, unit_cost = Decimal(1), amount
            elif money(quantity, "quantity") * money(unit_cost, "unit cost") != amount:
                raise LedgerError("quantity times unit cost must equal the settled amount")
            record_usage(
                member=hold.member,
                service=hold.service,
                kind=kind,
                quantity=quantity,
                unit=unit,
                unit_cost=unit_cost,
                cost_source=cost_source or f"hold {key}",
                occurred_at=occurred_at or timezone.now(),
                source_key=f"hold:{key}",
            )
        hold.refresh_from_db()
    return hold


_SETTLE = """
    WITH settled AS (
        UPDATE panel_credithold
        SET state = 'settled', settled_amount = %(amount)s, ended_at = %(now)s
        WHERE key = %(key)s AND state = 'held' AND member_id = %(member)s
          AND service = %(holder_service)s AND amount >= %(amount)s
          AND (NOT %(usage)s OR (
              EXISTS (SELECT 1 FROM panel_billingperiod WHERE starts_on = %(month)s)
              AND NOT EXISTS (
                  SELECT 1 FROM panel_usageevent
                  WHERE service = %(service)s AND source_key = %(source_key)s)))
        RETURNING id, member_id, amount, created_at, expires_at
    ), usage AS (
        INSERT INTO panel_usageevent
            (member_id, service, kind, quantity, unit, unit_cost, amount, cost_source,
             cost_rate_id, occurred_at, source_key, payload_hash, period_id, recorded_at)
        SELECT member_id, %(service)s, %(kind)s, %(quantity)s, %(unit)s, %(unit_cost)s,
               %(usage_amount)s, %(cost_source)s, NULL, %(occurred_at)s, %(source_key)s,
               %(payload_hash)s,
               (SELECT id FROM panel_billingperiod WHERE starts_on = %(month)s), %(now)s
        FROM settled WHERE %(usage)s
        RETURNING amount
    ), balance AS (
        UPDATE panel_memberbalance b
        SET held = b.held - s.amount,
            unbilled = b.unbilled + COALESCE((SELECT sum(amount) FROM usage), 0)
        FROM settled s WHERE b.member_id = s.member_id
        RETURNING b.member_id
    )
    SELECT s.id, s.amount, s.created_at, s.expires_at, (SELECT count(*) FROM balance)
    FROM settled s"""


_HOLD_ATTNAMES = [f.attname for f in CreditHold._meta.concrete_fields]
# PostgreSQL's quoting; psycopg returns the types the fields hold.
_HOLD_BY_KEY = (
    "SELECT "  # noqa: S608  (column names from the model)
    + ", ".join(f'"{f.column}"' for f in CreditHold._meta.concrete_fields)
    + " FROM panel_credithold WHERE key = %s"
)


def _settle_in_one_statement(
    *,
    key: str,
    holder: tuple[int, str] | None,
    amount: Decimal,
    kind: str,
    quantity: Decimal | None,
    unit: str,
    unit_cost: Decimal | None,
    cost_source: str,
    occurred_at: datetime | None,
) -> CreditHold | None:
    """credit_settle's common case on PostgreSQL: the hold, its usage and the balance at once.

    Settling is on the path of every call's hangup; the general path takes a dozen round
    trips (savepoints, get-or-creates). This one reads the hold, then settles it, records the
    usage and moves the balance in one statement, with the same checks and the same rows as
    the general path. Whenever that path would do anything else (the hold is not held, the
    amount is too large, the month has no period yet, the usage exists), this does nothing
    and returns None so that the general path decides.
    """
    if holder is None:
        # In SQL of its own: the ORM took longer to build the query than the database.
        with bound_cursor() as cursor:
            cursor.execute(_HOLD_BY_KEY, [key])
            row = cursor.fetchone()
        if row is None:
            return None
        found = CreditHold.from_db(connection.alias, _HOLD_ATTNAMES, row)
        if found.state != HoldState.HELD or amount > found.amount:
            return None
        holder = (found.member_id, found.service)
    member_id, service = holder
    now = timezone.now()
    usage = amount > 0
    params: dict[str, Any] = {
        "key": key,
        "member": member_id,
        "holder_service": service,
        "amount": amount,
        "now": now,
        "usage": usage,
    }
    if usage:
        if quantity is None or unit_cost is None:
            quantity, unit_cost = Decimal(1), amount
        elif money(quantity, "quantity") * money(unit_cost, "unit cost") != amount:
            raise LedgerError("quantity times unit cost must equal the settled amount")
        event = UsageInput(
            member_id=member_id,
            service=service,
            kind=kind,
            quantity=quantity,
            unit=unit,
            unit_cost=unit_cost,
            cost_source=cost_source or f"hold {key}",
            occurred_at=occurred_at or now,
            source_key=f"hold:{key}",
        )
        usage_amount, payload_hash, month = _checked(event)
        params.update(
            service=event.service,
            kind=event.kind,
            quantity=money(event.quantity, "quantity"),
            unit=event.unit,
            unit_cost=money(event.unit_cost, "unit cost"),
            usage_amount=usage_amount,
            cost_source=event.cost_source[:300],
            occurred_at=event.occurred_at,
            source_key=event.source_key,
            payload_hash=payload_hash,
            month=month,
        )
    else:
        params.update(
            dict.fromkeys(
                (
                    "service",
                    "kind",
                    "quantity",
                    "unit",
                    "unit_cost",
                    "usage_amount",
                    "cost_source",
                    "occurred_at",
                    "source_key",
                    "payload_hash",
                    "month",
                )
            )
        )
    # No savepoint: the statement is atomic, and a failure fails the caller's transaction.
    with transaction.atomic(savepoint=False), bound_cursor() as cursor:
        cursor.execute(_SETTLE, params)
        row = cursor.fetchone()
        if row is None:
            return None  # not held (any more), not this holder's, or too small: no change
        hold_id, held, created_at, expires_at, balances = row
        if balances != 1:
            raise LedgerError(f"hold {key!r} has no balance row to settle against")
    hold = CreditHold(
        id=hold_id,
        member_id=member_id,
        key=key,
        service=service,
        amount=held,
        state=HoldState.SETTLED,
        settled_amount=amount,
        created_at=created_at,
        expires_at=expires_at,
        ended_at=now,
    )
    hold._state.adding, hold._state.db = False, connection.alias
    return hold


def credit_release(*, key: str, state: HoldState = HoldState.RELEASED) -> bool:
    """Free a hold without charging; returns False when it was no longer held."""
    with transaction.atomic():
        hold = CreditHold.objects.get(key=key)
        released = CreditHold.objects.filter(pk=hold.pk, state=HoldState.HELD).update(
            state=state, ended_at=timezone.now()
        )
        if released:
            MemberBalance.objects.filter(member_id=hold.member_id).update(
                held=F("held") - hold.amount
            )
    return bool(released)


def release_expired_holds(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    keys = CreditHold.objects.filter(state=HoldState.HELD, expires_at__lt=now).values_list(
        "key", flat=True
    )
    return sum(credit_release(key=key, state=HoldState.EXPIRED) for key in list(keys))


# Payments and suppliers ---------------------------------------------------------------------


def payment_record(
    *,
    actor: User | None,
    member: User,
    amount: Decimal,
    received_on: date,
    reference: str,
    source_key: str,
    bank_import_id: int | None = None,
) -> tuple[Payment, bool]:
    """Book money a member paid: bank up, what they owe down, then their prepaid credit up."""
    amount = money(amount, "payment amount", positive=True)
    if amount != cents(amount):
        raise LedgerError(f"payment amount {amount} is not whole cents")
    first, last = booking_days()
    if not first <= received_on <= last:
        raise LedgerError(f"payment date {received_on} is not between {first} and {last}")
    with transaction.atomic():
        # The member's balance row is the lock for all money moving for this member; under it
        # a repeated payment is recognised, and the unique source key is the backstop.
        balance_for(member)
        MemberBalance.objects.select_for_update().get(member=member)
        existing = Payment.objects.filter(source_key=source_key).first()
        if existing is not None:
            if existing.member_id != member.pk or existing.amount != amount:
                raise LedgerError(f"payment {source_key!r} was already booked with other details")
            return existing, False
        legs = [
            LegSpec(account_for(purpose=AccountPurpose.BANK), debit=amount, memo=reference[:200])
        ]
        legs += member_incoming_legs(member, amount, memo=reference[:200])
        txn, _ = post(
            kind=TransactionKind.MEMBER_PAYMENT,
            source_key=f"payment:{source_key}",
            legs=legs,
            period=posting_period(received_on),
            description=f"Payment from {member.email}: {reference}",
            actor=actor,
        )
        payment = Payment.objects.create(
            member=member,
            amount=amount,
            received_on=received_on,
            reference=reference[:200],
            source_key=source_key,
            transaction=txn,
            bank_import_id=bank_import_id,
        )
        audit_record(
            actor=actor,
            action="payment.recorded",
            obj=payment,
            owner=member,
            after=snapshot(payment, ("amount", "received_on", "reference")),
        )
    return payment, True


@transaction.atomic
def supplier_invoice_record(
    *,
    actor: User,
    supplier: Supplier,
    service: str,
    period: BillingPeriod,
    reference: str,
    invoice_date: date,
    amount: Decimal,
    description: str = "",
) -> SupplierInvoice:
    """Enter what a supplier charged the co-op for a service in a period."""
    amount = money(amount, "invoice amount", positive=True)
    if service not in Service.values:
        raise LedgerError(f"unknown service {service!r}")
    if period.state != PeriodState.OPEN:
        raise LedgerError(f"period {period} is {period.state}; enter the invoice in an open period")
    txn, created = post(
        kind=TransactionKind.SUPPLIER_COST,
        source_key=f"invoice:{supplier.pk}:{_key_part(reference)}",
        legs=[
            LegSpec(
                account_for(purpose=AccountPurpose.SUPPLIER_COST, service=service), debit=amount
            ),
            LegSpec(
                account_for(purpose=AccountPurpose.SUPPLIER_PAYABLE, supplier=supplier),
                credit=amount,
            ),
        ],
        period=period,
        description=f"{supplier.name} invoice {reference}",
        actor=actor,
    )
    if not created:
        raise LedgerError(f"invoice {reference!r} of {supplier.name} is already entered")
    invoice = SupplierInvoice.objects.create(
        supplier=supplier,
        service=service,
        period=period,
        reference=reference,
        invoice_date=invoice_date,
        amount=amount,
        description=description,
        transaction=txn,
    )
    audit_record(
        actor=actor,
        action="invoice.recorded",
        obj=invoice,
        owner=None,
        after=snapshot(invoice, ("supplier", "service", "period", "reference", "amount")),
    )
    return invoice


@transaction.atomic
def supplier_invoice_pay(
    *, actor: User, invoice: SupplierInvoice, paid_on: date
) -> SupplierInvoice:
    txn, _ = post(
        kind=TransactionKind.SUPPLIER_PAYMENT,
        source_key=f"invoice-paid:{invoice.pk}",
        legs=[
            LegSpec(
                account_for(purpose=AccountPurpose.SUPPLIER_PAYABLE, supplier=invoice.supplier),
                debit=invoice.amount,
            ),
            LegSpec(account_for(purpose=AccountPurpose.BANK), credit=invoice.amount),
        ],
        period=posting_period(paid_on),
        description=f"Paid {invoice.supplier.name} invoice {invoice.reference}",
        actor=actor,
    )
    updated = SupplierInvoice.objects.filter(pk=invoice.pk, paid_by__isnull=True).update(
        paid_by=txn
    )
    if updated:
        audit_record(
            actor=actor, action="invoice.paid", obj=invoice, owner=None, after={"paid_on": paid_on}
        )
    invoice.refresh_from_db()
    return invoice


def _key_part(text: str) -> str:
    """A source-key-safe rendering of free text (an invoice number may contain anything)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{cleaned or 'x'}.{digest}"


# Cost rates ---------------------------------------------------------------------------------


@transaction.atomic
def cost_rate_set(
    *,
    actor: User,
    service: str,
    kind: str,
    unit: str,
    unit_cost: Decimal,
    supplier: Supplier,
    reference: str,
    valid_from: date,
    valid_to: date | None = None,
) -> CostRate:
    """Enter a unit cost with its source; an open-ended earlier rate ends where this starts."""
    unit_cost = money(unit_cost, "unit cost")
    if service not in Service.values:
        raise LedgerError(f"unknown service {service!r}")
    if not KIND.match(kind):
        raise LedgerError(f"kind {kind!r} does not match {KIND.pattern}")
    if not UNIT.match(unit):
        raise LedgerError(f"unit {unit!r} does not match {UNIT.pattern}")
    if not reference.strip():
        raise LedgerError("say where the cost comes from (invoice or price-list reference)")
    if valid_to is not None and valid_to <= valid_from:
        raise LedgerError("valid to must be after valid from")
    for earlier in CostRate.objects.select_for_update().filter(
        service=service, kind=kind, valid_to__isnull=True, valid_from__lt=valid_from
    ):
        before = snapshot(earlier, ("unit_cost", "valid_from", "valid_to"))
        CostRate.objects.filter(pk=earlier.pk, valid_to__isnull=True).update(valid_to=valid_from)
        earlier.refresh_from_db()
        audit_record(
            actor=actor,
            action="cost_rate.ended",
            obj=earlier,
            owner=None,
            before=before,
            after=snapshot(earlier, ("unit_cost", "valid_from", "valid_to")),
        )
    try:
        with transaction.atomic():
            rate = CostRate.objects.create(
                service=service,
                kind=kind,
                unit=unit,
                unit_cost=unit_cost,
                supplier=supplier,
                reference=reference,
                valid_from=valid_from,
                valid_to=valid_to,
            )
    except IntegrityError:
        until = valid_to or "open end"
        raise LedgerError(
            f"a {service}/{kind} rate already covers part of {valid_from} to {until}"
        ) from None
    audit_record(
        actor=actor,
        action="cost_rate.set",
        obj=rate,
        owner=None,
        after=snapshot(
            rate,
            (
                "service",
                "kind",
                "unit",
                "unit_cost",
                "supplier",
                "reference",
                "valid_from",
                "valid_to",
            ),
        ),
    )
    return rate


def cost_rate_at(*, service: str, kind: str, day: date) -> CostRate:
    from django.db.models import Q

    rate = (
        CostRate.objects.select_related("supplier")
        .filter(service=service, kind=kind, valid_from__lte=day)
        .filter(Q(valid_to__isnull=True) | Q(valid_to__gt=day))
        .first()
    )
    if rate is None:
        raise LedgerError(f"no {service}/{kind} cost rate is valid on {day}")
    return rate


def ledger_totals() -> tuple[Decimal, Decimal]:
    """Sum of all debits and all credits: equal, always (the trial balance)."""
    totals = Leg.objects.aggregate(d=Sum("debit"), c=Sum("credit"))
    return totals["d"] or ZERO, totals["c"] or ZERO


CURRENCY = settings.CURRENCY
