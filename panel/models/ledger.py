"""The commune's books: double-entry accounts and postings, usage, periods, holds, suppliers.

Money is Decimal everywhere. Ledger legs keep 6 decimal places so that usage is recognised at
its exact cost and the difference to the cent-rounded statement lines lands, visibly, in the
rounding account; every amount that reaches a member's account is whole cents.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

MONEY_DIGITS, MONEY_PLACES = 24, 6
CENTS = Decimal("0.01")
ZERO = Decimal("0")


def money_field(**options: Any) -> models.DecimalField[Decimal, Decimal]:
    """An amount: 6 decimal places, up to 18 before the point."""
    return models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, **options)


class Service(models.TextChoices):
    HOSTING = "hosting", _("Hosting")
    NEWSLETTERS = "newsletters", _("Newsletters")
    CALLS = "calls", _("Calls")


class AccountType(models.TextChoices):
    ASSET = "asset", _("Asset")
    LIABILITY = "liability", _("Liability")
    INCOME = "income", _("Income")
    EXPENSE = "expense", _("Expense")
    EQUITY = "equity", _("Equity")


class AccountPurpose(models.TextChoices):
    MEMBER_CREDIT = "member_credit", _("Member credit")
    MEMBER_RECEIVABLE = "member_receivable", _("Member receivable")
    SUPPLIER_PAYABLE = "supplier_payable", _("Supplier payable")
    COST_RECOVERY = "cost_recovery", _("Cost recovery")
    SUPPLIER_COST = "supplier_cost", _("Supplier cost")
    OTHER_INCOME = "other_income", _("Other income")
    BANK = "bank", _("Bank")
    COMMUNE_UNDISTRIBUTED = "commune_undistributed", _("Commune undistributed")
    COMMUNE_RESERVE = "commune_reserve", _("Commune reserve")
    ROUNDING = "rounding", _("Rounding")


PURPOSE_TYPE = {
    AccountPurpose.MEMBER_CREDIT: AccountType.LIABILITY,
    AccountPurpose.MEMBER_RECEIVABLE: AccountType.ASSET,
    AccountPurpose.SUPPLIER_PAYABLE: AccountType.LIABILITY,
    AccountPurpose.COST_RECOVERY: AccountType.INCOME,
    AccountPurpose.SUPPLIER_COST: AccountType.EXPENSE,
    AccountPurpose.OTHER_INCOME: AccountType.INCOME,
    AccountPurpose.BANK: AccountType.ASSET,
    AccountPurpose.COMMUNE_UNDISTRIBUTED: AccountType.EQUITY,
    AccountPurpose.COMMUNE_RESERVE: AccountType.EQUITY,
    AccountPurpose.ROUNDING: AccountType.INCOME,
}


class Supplier(models.Model):
    name = models.CharField(max_length=200, unique=True)
    contact = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name


class Account(models.Model):
    """One ledger account. Which one it is follows from purpose and its owner."""

    code = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=16, choices=AccountType.choices)
    purpose = models.CharField(max_length=32, choices=AccountPurpose.choices)
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    supplier = models.ForeignKey(
        Supplier, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    service = models.CharField(max_length=16, blank=True, choices=Service.choices)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name

    @property
    def debit_normal(self) -> bool:
        return self.type in (AccountType.ASSET, AccountType.EXPENSE)


class PeriodState(models.TextChoices):
    OPEN = "open", _("Open")
    CLOSING = "closing", _("Closing")
    CLOSED = "closed", _("Closed")


class DeficitChoice(models.TextChoices):
    RESERVE = "reserve", _("Draw on the commune reserve")
    PER_HEAD = "per_head", _("Equal charge per member")


class BillingPeriod(models.Model):
    """A calendar month of the books. Closed periods take no postings (a database trigger)."""

    starts_on = models.DateField(unique=True)
    ends_on = models.DateField()  # exclusive: the first day of the next month
    state = models.CharField(max_length=16, choices=PeriodState.choices, default=PeriodState.OPEN)
    close_progress = models.PositiveIntegerField(default=0)
    close_total = models.PositiveIntegerField(default=0)
    close_error = models.TextField(blank=True)
    # The close charges usage with occurred_at before ends_on and id <= usage_cutoff that an
    # earlier close did not charge. The cutoff is taken once, when the close starts, after
    # every insert in flight has committed; so a retried close charges exactly the same set.
    usage_cutoff = models.BigIntegerField(null=True, blank=True)
    deficit_choice = models.CharField(max_length=16, choices=DeficitChoice.choices, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Figures of the close, kept for the Commune page (the legs remain the source of truth).
    cost_recovery = money_field(null=True, blank=True)
    other_income = money_field(null=True, blank=True)
    supplier_costs = money_field(null=True, blank=True)
    result = money_field(null=True, blank=True)
    distributed = money_field(null=True, blank=True)
    members = models.PositiveIntegerField(null=True, blank=True)
    per_head = money_field(null=True, blank=True)

    class Meta:
        ordering = ["-starts_on"]
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(ends_on__gt=F("starts_on")), name="period_not_empty"
            ),
            models.CheckConstraint(
                condition=~Q(state="closed") | Q(closed_at__isnull=False),
                name="period_closed_has_time",
            ),
        ]

    def __str__(self) -> str:
        return self.starts_on.strftime("%Y-%m")


class TransactionKind(models.TextChoices):
    USAGE_CHARGE = "usage_charge", _("Usage charge")
    MEMBER_PAYMENT = "member_payment", _("Member payment")
    SUPPLIER_COST = "supplier_cost", _("Supplier cost")
    SUPPLIER_PAYMENT = "supplier_payment", _("Supplier payment")
    PERIOD_CLOSE = "period_close", _("Period close")
    SURPLUS_DISTRIBUTION = "surplus_distribution", _("Surplus distribution")
    DEFICIT_CHARGE = "deficit_charge", _("Deficit charge")
    REVERSAL = "reversal", _("Reversal")


class Transaction(models.Model):
    kind = models.CharField(max_length=32, choices=TransactionKind.choices)
    source_key = models.CharField(max_length=200)
    period = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="transactions")
    posted_at = models.DateTimeField(default=timezone.now)
    description = models.CharField(max_length=300)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )

    class Meta:
        ordering = ["-posted_at", "-id"]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["kind", "source_key"], name="transaction_source_unique"
            ),
            models.CheckConstraint(
                condition=Q(kind="reversal", reverses__isnull=False)
                | (~Q(kind="reversal") & Q(reverses__isnull=True)),
                name="transaction_reversal_points_back",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.source_key}"


class Leg(models.Model):
    """One side of a posting: a positive debit or a positive credit, never both."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="legs")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="legs")
    debit = money_field(default=ZERO)
    credit = money_field(default=ZERO)
    memo = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=(Q(debit__gt=0) & Q(credit=0)) | (Q(credit__gt=0) & Q(debit=0)),
                name="leg_one_positive_side",
            )
        ]
        indexes: ClassVar = [models.Index(fields=["account", "transaction"], name="leg_account")]

    def __str__(self) -> str:
        side = f"Dr {self.debit}" if self.debit else f"Cr {self.credit}"
        return f"{self.account} {side}"


class MemberBalance(models.Model):
    """What a member may still spend, kept in one row so that a hold is one guarded UPDATE.

    ``posted`` is the member's credit account minus the receivable (whole cents, from the
    ledger); ``unbilled`` is usage recorded but not charged yet (exact); ``held`` the sum of
    open holds. Available = posted - unbilled - held.
    """

    member = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="balance", primary_key=True
    )
    posted = money_field(default=ZERO)
    unbilled = money_field(default=ZERO)
    held = money_field(default=ZERO)
    payment_reference = models.CharField(max_length=32, unique=True)

    class Meta:
        constraints: ClassVar = [
            models.CheckConstraint(condition=Q(held__gte=0), name="balance_held_not_negative"),
            models.CheckConstraint(
                condition=Q(unbilled__gte=0), name="balance_unbilled_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"Balance of {self.member}"

    @property
    def available(self) -> Decimal:
        return self.posted - self.unbilled - self.held


class CostRate(models.Model):
    """What one unit of a service costs the co-op, with where that number comes from."""

    service = models.CharField(max_length=16, choices=Service.choices)
    kind = models.CharField(max_length=50)  # e.g. disk, transfer, messages, call
    unit = models.CharField(max_length=30)  # e.g. GB-month, GB, message, minute
    unit_cost = money_field()
    supplier = models.ForeignKey(Supplier, on_delete=models.PROTECT, related_name="cost_rates")
    reference = models.CharField(max_length=200)  # invoice number or price-list reference
    valid_from = models.DateField()
    valid_to = models.DateField(null=True, blank=True)  # exclusive; open-ended when empty

    class Meta:
        ordering = ["service", "kind", "-valid_from"]
        constraints: ClassVar = [
            models.CheckConstraint(condition=Q(unit_cost__gte=0), name="cost_rate_not_negative"),
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gt=F("valid_from")),
                name="cost_rate_valid_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.kind}: {self.unit_cost} per {self.unit}"

    @property
    def source_label(self) -> str:
        return f"{self.supplier.name}, {self.reference}, from {self.valid_from:%Y-%m-%d}"


class UsageEvent(models.Model):
    """One metered use of a service, rated at cost when recorded.

    ``period`` is where it belongs (by ``occurred_at``). Which close charged it follows from
    the closes' cutoffs (see BillingPeriod.usage_cutoff): usage recorded after its period
    closed is charged by the next close, as a late line that names its own period.
    """

    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    service = models.CharField(max_length=16, choices=Service.choices)
    kind = models.CharField(max_length=50)
    quantity = money_field()
    unit = models.CharField(max_length=30)
    unit_cost = money_field()
    amount = money_field()
    cost_source = models.CharField(max_length=300)
    cost_rate = models.ForeignKey(
        CostRate, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    occurred_at = models.DateTimeField()
    source_key = models.CharField(max_length=200)
    payload_hash = models.CharField(max_length=64)
    period = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="+")
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["service", "source_key"], name="usage_source_unique"),
            models.CheckConstraint(
                condition=Q(quantity__gte=0), name="usage_quantity_not_negative"
            ),
            models.CheckConstraint(condition=Q(unit_cost__gte=0), name="usage_cost_not_negative"),
        ]
        indexes: ClassVar = [
            models.Index(fields=["occurred_at", "id"], name="usage_occurred"),
            models.Index(fields=["member", "service", "occurred_at"], name="usage_member_service"),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.kind} {self.quantity} {self.unit} for {self.member_id}"


class StatementLine(models.Model):
    """One line of a member's statement for a closed period: usage of one kind at one rate.

    Written by the close, never changed: the statement shows what was charged.
    """

    period = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="lines")
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    service = models.CharField(max_length=16, choices=Service.choices)
    kind = models.CharField(max_length=50)
    unit = models.CharField(max_length=30)
    unit_cost = money_field()
    cost_source = models.CharField(max_length=300)
    belongs_to = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="+")
    quantity = money_field()
    events = models.PositiveIntegerField()
    exact_amount = money_field()
    amount = money_field()  # rounded to cents, once
    # None when the member's usage cost nothing at all: there is nothing to post.
    transaction = models.ForeignKey(
        Transaction, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["period", "member", "service", "kind", "id"]
        indexes: ClassVar = [models.Index(fields=["member", "period"], name="line_member_period")]

    def __str__(self) -> str:
        return f"{self.service}/{self.kind} {self.amount}"

    @property
    def late(self) -> bool:
        return self.belongs_to_id != self.period_id


class HoldState(models.TextChoices):
    HELD = "held", _("Held")
    SETTLED = "settled", _("Settled")
    RELEASED = "released", _("Released")
    EXPIRED = "expired", _("Expired")


class CreditHold(models.Model):
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Unique by a constraint, not unique=True: that adds a LIKE index on PostgreSQL, which
    # nothing uses and every call setup would write.
    key = models.CharField(max_length=200)
    service = models.CharField(max_length=16, choices=Service.choices)
    amount = money_field()
    state = models.CharField(max_length=16, choices=HoldState.choices, default=HoldState.HELD)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    settled_amount = money_field(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="hold_positive"),
            models.UniqueConstraint(fields=["key"], name="hold_key_unique"),
        ]
        indexes: ClassVar = [
            models.Index(fields=["expires_at"], name="hold_open", condition=Q(state="held"))
        ]

    def __str__(self) -> str:
        return f"Hold {self.key} {self.amount} ({self.state})"


class SupplierInvoice(models.Model):
    supplier = models.ForeignKey(Supplier, on_delete=models.PROTECT, related_name="invoices")
    service = models.CharField(max_length=16, choices=Service.choices)
    period = models.ForeignKey(BillingPeriod, on_delete=models.PROTECT, related_name="invoices")
    reference = models.CharField(max_length=100)
    invoice_date = models.DateField()
    amount = money_field()
    description = models.CharField(max_length=300, blank=True)
    transaction = models.OneToOneField(Transaction, on_delete=models.PROTECT, related_name="+")
    paid_by = models.OneToOneField(
        Transaction, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-invoice_date", "-id"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["supplier", "reference"], name="invoice_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="invoice_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.supplier} {self.reference}"


class Payment(models.Model):
    """Money a member paid in; its ledger posting is ``transaction``."""

    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    amount = money_field()
    received_on = models.DateField()
    reference = models.CharField(max_length=200)
    source_key = models.CharField(max_length=200, unique=True)
    transaction = models.OneToOneField(Transaction, on_delete=models.PROTECT, related_name="+")
    bank_import = models.ForeignKey(
        "BankImport", null=True, blank=True, on_delete=models.PROTECT, related_name="payments"
    )

    class Meta:
        ordering = ["-received_on", "-id"]
        constraints: ClassVar = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} from {self.member} on {self.received_on}"


class ImportState(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class BankImport(models.Model):
    """An uploaded bank statement (CSV); imported by a task, all rows or none."""

    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    uploaded_at = models.DateTimeField(default=timezone.now)
    filename = models.CharField(max_length=200)
    content = models.TextField()
    state = models.CharField(
        max_length=16, choices=ImportState.choices, default=ImportState.PENDING
    )
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    unmatched = models.JSONField(default=list, blank=True)
    errors = models.JSONField(default=list, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-uploaded_at", "-id"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.state})"
