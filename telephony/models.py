"""Long-distance dial-in: access numbers, trunks, versioned rate decks, plans, phones, calls."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from panel.models.ledger import money_field


class DestinationClass(models.TextChoices):
    FIXED = "fixed", _("Landlines")
    MOBILE = "mobile", _("Mobiles")
    TOLL_FREE = "toll_free", _("Toll-free numbers")
    PREMIUM = "premium", _("Premium-rate numbers")
    SHARED_COST = "shared_cost", _("Shared-cost numbers")
    OTHER = "other", _("Other numbers")


DEFAULT_ALLOWED = [DestinationClass.FIXED, DestinationClass.MOBILE, DestinationClass.TOLL_FREE]
ADMIN_ONLY_CLASSES = {DestinationClass.PREMIUM, DestinationClass.SHARED_COST}


class AccessNumber(models.Model):
    """A local number members call; Asterisk hands such calls to the panel's FastAGI server."""

    number = models.CharField(max_length=20, unique=True)  # E.164
    city = models.CharField(max_length=100)
    country = models.CharField(max_length=2)  # ISO 3166-1 alpha-2: the default region
    context = models.CharField(max_length=50, default="dialin")

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} ({self.city})"


class Carrier(models.Model):
    name = models.CharField(max_length=100, unique=True)
    supplier = models.ForeignKey("panel.Supplier", on_delete=models.PROTECT, related_name="+")

    def __str__(self) -> str:
        return self.name


class Trunk(models.Model):
    """A way out to a carrier; ``dial_template`` may contain ``{number}`` and nothing else."""

    carrier = models.ForeignKey(Carrier, on_delete=models.PROTECT, related_name="trunks")
    name = models.CharField(max_length=50, unique=True)
    dial_template = models.CharField(max_length=200)
    priority = models.PositiveSmallIntegerField(default=10, help_text=_("Lower is tried first."))
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name


class DeckState(models.TextChoices):
    # Uploaded, its columns being mapped on the preview page; not a version yet.
    DRAFT = "draft", _("Being mapped")
    IMPORTING = "importing", _("Importing")
    READY = "ready", _("Ready")
    FAILED = "failed", _("Failed")


class RateDeck(models.Model):
    """One version of a carrier's price list; calls keep the version they were rated with."""

    carrier = models.ForeignKey(Carrier, on_delete=models.PROTECT, related_name="decks")
    version = models.PositiveIntegerField(null=True, blank=True)  # given when imported
    effective_from = models.DateTimeField()
    source_name = models.CharField(max_length=200)
    source_sha256 = models.CharField(max_length=64)
    content = models.BinaryField(null=True, blank=True)  # the upload, until imported
    mapping = models.JSONField(default=dict)
    # How it was read: a preset's or a saved mapping's name, for the list of decks.
    read_as = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=16, choices=DeckState.choices, default=DeckState.IMPORTING)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # When its import was last asked for (upload or retry): an import still running long after
    # is taken for one whose worker stopped (fail_stale_deck_imports).
    queued_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-effective_from", "-version"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["carrier", "version"], name="deck_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.carrier} v{self.version or '?'}"


class DeckMapping(models.Model):
    """A carrier's columns, saved under a name so that next month's deck is read the same way."""

    carrier = models.ForeignKey(Carrier, on_delete=models.CASCADE, related_name="mappings")
    name = models.CharField(max_length=100)
    mapping = models.JSONField(default=dict)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["carrier__name", "name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["carrier", "name"], name="deck_mapping_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.carrier}: {self.name}"


class Rate(models.Model):
    """One prefix's price in a deck.

    ``effective_from`` is set when the carrier's row names a later moment than the deck's
    own (a price change announced in the same file): the rate is not used before it, and
    until then a shorter prefix or the same prefix's undated row applies.
    """

    # The (deck, prefix) index serves both the lookups and the foreign key.
    deck = models.ForeignKey(
        RateDeck, on_delete=models.PROTECT, related_name="rates", db_index=False
    )
    prefix = models.CharField(max_length=15)  # E.164 digits without the plus
    description = models.CharField(max_length=200, blank=True)
    per_minute = money_field()
    connect_fee = money_field(default=Decimal(0))
    initial_seconds = models.PositiveIntegerField(default=60)
    increment_seconds = models.PositiveIntegerField(default=60)
    free_seconds = models.PositiveIntegerField(default=0)  # the first seconds cost nothing
    effective_from = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["deck", "prefix"], name="rate_deck_prefix")]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["deck", "prefix"],
                condition=Q(effective_from__isnull=True),
                name="rate_prefix_unique",
            ),
            models.UniqueConstraint(
                fields=["deck", "prefix", "effective_from"],
                condition=Q(effective_from__isnull=False),
                name="rate_prefix_from_unique",
            ),
            models.CheckConstraint(
                condition=Q(increment_seconds__gt=0), name="rate_increment_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"+{self.prefix} {self.per_minute}/min"


class CallPlan(models.Model):
    member = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="call_plan"
    )
    max_concurrent = models.PositiveSmallIntegerField(default=2)
    per_call_cap = money_field(default=Decimal("5.00"))
    allowed_classes = models.JSONField(default=list)
    pin_hash = models.CharField(max_length=200, blank=True)
    account_number = models.CharField(max_length=12, unique=True)

    def __str__(self) -> str:
        return f"Call plan of {self.member}"


class Phone(models.Model):
    """A member's caller ID. Verified when the member calls from it and keys in the code."""

    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="phones"
    )
    number = models.CharField(max_length=20)  # E.164
    verification_code = models.CharField(max_length=6, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]
        constraints: ClassVar = [
            # A caller ID identifies one member; nobody can verify a number another member has.
            models.UniqueConstraint(
                fields=["number"],
                condition=Q(verified_at__isnull=False),
                name="phone_verified_once",
            ),
            models.UniqueConstraint(fields=["member", "number"], name="phone_per_member"),
        ]

    def __str__(self) -> str:
        return self.number


class CallState(models.TextChoices):
    REFUSED = "refused", _("Refused")
    ABANDONED = "abandoned", _("Hung up before the decision")
    AUTHORIZED = "authorized", _("In progress")
    SETTLED = "settled", _("Done")
    EXPIRED = "expired", _("Never settled")


class SettledBy(models.TextChoices):
    """How a call's end reached the panel: operators look twice at anything but the first."""

    HANGUP = "hangup", _("Hangup handler")
    RECONCILIATION = "reconciliation", _("Reconciliation from Asterisk")
    CHANNEL_GONE = "channel_gone", _("Channel gone without a hangup")
    SERVER = "server", _("FastAGI server")


class CallRecord(models.Model):
    """One call: written on every call setup and again at its hangup.

    Each index is written on both (the hangup changes ``state``, which is indexed, so the
    update is never a HOT one), so this table keeps the indexes its queries use and no
    more: the uniqueid's constraint without Django's extra LIKE index, the member's calls
    by state (which serves the member alone too), the deck and the access number; the rate
    and the trunk are only ever looked up from the call.
    """

    uniqueid = models.CharField(max_length=64)
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    caller = models.CharField(max_length=32, blank=True)
    destination = models.CharField(max_length=32, blank=True)
    destination_class = models.CharField(max_length=16, blank=True)
    access_number = models.ForeignKey(
        AccessNumber, null=True, on_delete=models.PROTECT, related_name="+"
    )
    state = models.CharField(max_length=16, choices=CallState.choices)
    refusal = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    limit_seconds = models.PositiveIntegerField(default=0)
    connected_seconds = models.DecimalField(max_digits=12, decimal_places=3, default=0)
    billed_seconds = models.PositiveIntegerField(default=0)
    dial_status = models.CharField(max_length=20, blank=True)
    deck = models.ForeignKey(RateDeck, null=True, on_delete=models.PROTECT, related_name="+")
    rate = models.ForeignKey(
        Rate, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # The rule as applied, kept with the call: later decks never change how it was rated.
    per_minute = money_field(default=Decimal(0))
    connect_fee = money_field(default=Decimal(0))
    initial_seconds = models.PositiveIntegerField(default=0)
    increment_seconds = models.PositiveIntegerField(default=1)
    free_seconds = models.PositiveIntegerField(default=0)
    trunk = models.ForeignKey(
        Trunk, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    cost = money_field(default=Decimal(0))
    hold_key = models.CharField(max_length=200, blank=True)
    # The Asterisk node that carried the call (its name in ASTERISK_AMI): the reconciliation
    # judges a call only by the node it came through.
    node = models.CharField(max_length=63, blank=True)
    # Tried by `manage.py dialin_check`, not by a member: kept out of the member's history.
    is_check = models.BooleanField(default=False)
    # Every trunk the call may go out by, in the order the dialplan tries them, each with its
    # carrier's rate and the limit the hold gives it; the settle names the one that carried it.
    routes = models.JSONField(default=list, blank=True)
    route = models.PositiveSmallIntegerField(default=1)
    # When the reconciliation last saw the call's channel up in Asterisk.
    seen_at = models.DateTimeField(null=True, blank=True)
    settled_by = models.CharField(max_length=16, choices=SettledBy.choices, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["uniqueid"], name="call_uniqueid_unique"),
        ]
        indexes: ClassVar = [
            models.Index(fields=["member", "state"], name="call_member_state"),
        ]

    def __str__(self) -> str:
        return f"{self.caller} → {self.destination} ({self.state})"


class PinLock(models.Model):
    """Wrong PINs counted across calls, per account number and per caller ID.

    A 4-digit PIN is 10,000 guesses; three tries per call would let a script through in an
    afternoon. After ``FREE_TRIES`` wrong PINs the key is locked for a minute, each further
    wrong PIN doubles the wait, and at ``BLOCK_AFTER`` it stays locked until the member (or
    an admin) unlocks it in the panel. A right PIN forgets the count.
    """

    key = models.CharField(max_length=80, unique=True)  # account:NNN or caller:+49...
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    failures = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    blocked = models.BooleanField(default=False)
    last_failure_at = models.DateTimeField(default=timezone.now)
    # Set when the member must hear of a new lock; cleared by the job that emails them.
    notify = models.BooleanField(default=False)

    class Meta:
        ordering = ["-last_failure_at"]

    def __str__(self) -> str:
        return f"{self.key}: {self.failures} wrong"
