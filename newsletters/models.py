"""Newsletters: sending domains, lists, subscribers with their consent, campaigns, deliveries."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class SendingDomain(models.Model):
    """A member's claim of a domain to send from; verified when its DKIM key (or SPF) aligns
    with From. Several members may claim a name; one verified claim holds it (see
    services.domains)."""

    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sending_domains"
    )
    name = models.CharField(_("domain"), max_length=253)
    dkim_selector = models.CharField(max_length=63)
    # The key signs only this member's mail; it never leaves the panel and is not shown.
    dkim_private_key = models.TextField()
    dkim_public_key = models.TextField()
    verified_at = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # What the last check found, per record: {"dkim": {"ok": bool, "found": [...]}, ...}.
    check_result = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Set when an admin gave this claim the name regardless of DNS; the audit log has who.
    override_reason = models.CharField(max_length=300, blank=True)
    # When the member was emailed that another member holds the name (once per loss).
    lost_notice_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["member", "name"], name="sending_domain_claim_unique"),
            # A claim holds nothing until it is proven; then it holds the name alone.
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(verified_at__isnull=False),
                name="sending_domain_verified_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def dkim_name(self) -> str:
        return f"{self.dkim_selector}._domainkey.{self.name}"


class MailingList(models.Model):
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="mailing_lists"
    )
    name = models.CharField(_("name"), max_length=100)
    # The public address of the signup page and the archive: /n/<slug>/.
    slug = models.SlugField(_("address"), max_length=60)
    description = models.TextField(_("description"), blank=True)
    domain = models.ForeignKey(SendingDomain, on_delete=models.PROTECT, related_name="lists")
    from_name = models.CharField(_("From name"), max_length=100)
    from_local = models.CharField(_("From address (before the @)"), max_length=64)
    signup_open = models.BooleanField(_("public signup page"), default=True)
    archive_public = models.BooleanField(_("public archive"), default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["slug"], name="list_slug_unique"),
            models.UniqueConstraint(fields=["member", "name"], name="list_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def from_address(self) -> str:
        return f"{self.from_local}@{self.domain.name}"


class SubscriberStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for confirmation")
    CONFIRMED = "confirmed", _("Confirmed")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
    BOUNCED = "bounced", _("Bounced")
    COMPLAINED = "complained", _("Complained")


class Subscriber(models.Model):
    list = models.ForeignKey(MailingList, on_delete=models.PROTECT, related_name="subscribers")
    email = models.CharField(max_length=254)  # normalised: see validation.normalise_email
    name = models.CharField(max_length=100, blank=True)
    status = models.CharField(
        max_length=16, choices=SubscriberStatus.choices, default=SubscriberStatus.PENDING
    )
    # Mailman's rules: a hard bounce counts 1, a soft one 0.5, one bounce a day; at the
    # threshold the address is suppressed; a score older than a week starts again from 0.
    bounce_score = models.DecimalField(max_digits=6, decimal_places=1, default=0)
    last_bounce_on = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["email"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["list", "email"], name="subscriber_unique"),
        ]
        indexes: ClassVar = [models.Index(fields=["list", "status"], name="subscriber_status")]

    def __str__(self) -> str:
        return self.email


class ConsentKind(models.TextChoices):
    SUBSCRIBE = "subscribe", _("Subscribed")
    CONFIRM = "confirm", _("Confirmed")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribed")


class ConsentEvent(models.Model):
    """What a person agreed to, when, from where: append-only (the database refuses changes)."""

    subscriber = models.ForeignKey(
        Subscriber, on_delete=models.PROTECT, related_name="consent_events"
    )
    kind = models.CharField(max_length=16, choices=ConsentKind.choices)
    at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    # The form, import, link or report it came from, e.g. "form /n/garden/" or "import 12".
    source = models.CharField(max_length=300)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.subscriber_id} {self.at:%Y-%m-%d %H:%M}"


class ImportMode(models.TextChoices):
    CONFIRMED = "confirmed", _("Already confirmed (the consent source documents it)")
    DOUBLE_OPT_IN = "double_opt_in", _("Send each a confirmation email")


class ImportState(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class SubscriberImport(models.Model):
    list = models.ForeignKey(MailingList, on_delete=models.PROTECT, related_name="imports")
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    filename = models.CharField(max_length=200)
    content = models.TextField()  # the uploaded CSV, kept as the consent record's evidence
    consent_source = models.CharField(max_length=300)
    mode = models.CharField(max_length=16, choices=ImportMode.choices)
    state = models.CharField(max_length=16, choices=ImportState.choices, default=ImportState.QUEUED)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    added = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    kept = models.PositiveIntegerField(default=0)  # opted out before: an import does not undo it
    errors = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"import {self.pk} into {self.list_id}"


class CampaignState(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SCHEDULED = "scheduled", _("Scheduled")
    SENDING = "sending", _("Sending")
    PAUSED = "paused", _("Paused")
    SENT = "sent", _("Sent")
    CANCELLED = "cancelled", pgettext_lazy("campaign state", "Cancelled")


class Campaign(models.Model):
    list = models.ForeignKey(MailingList, on_delete=models.PROTECT, related_name="campaigns")
    subject = models.CharField(_("subject"), max_length=200)
    text_body = models.TextField(_("plain text"))
    html_body = models.TextField(_("HTML"), blank=True)
    state = models.CharField(
        max_length=16, choices=CampaignState.choices, default=CampaignState.DRAFT
    )
    scheduled_at = models.DateTimeField(_("send at"), null=True, blank=True)
    # Deliveries exist once this is set: the recipients are fixed when sending starts.
    prepared_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(max_length=300, blank=True)
    # A sender promises a sign of life by then; past it, the maintenance job starts new ones.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Counters, moved in the same transactions as the deliveries they count.
    recipients = models.PositiveIntegerField(default=0)
    submitted = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    bounces = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    # Complaints already seen when the member resumed after a complaint pause.
    complaints_acknowledged = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes: ClassVar = [models.Index(fields=["state"], name="campaign_state")]

    def __str__(self) -> str:
        return self.subject


class DeliveryState(models.TextChoices):
    QUEUED = "queued", _("Queued")
    LEASED = "leased", _("Being sent")
    DEFERRED = "deferred", _("Deferred (temporary failure)")
    SUBMITTED = "submitted", _("Handed to the relay")
    FAILED = "failed", _("Refused by the relay")
    SKIPPED = "skipped", _("Not sent (unsubscribed, suppressed or cancelled)")


class Delivery(models.Model):
    """One message of one campaign to one subscriber; its id makes the Message-ID."""

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="deliveries")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.QUEUED
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    response = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["campaign", "subscriber"], name="delivery_unique"),
        ]
        indexes: ClassVar = [
            # The claim query: a campaign's sendable rows in id order.
            models.Index(
                fields=["campaign", "id"],
                condition=Q(state__in=["queued", "deferred"]),
                name="delivery_sendable",
            ),
            models.Index(
                fields=["lease_until"], condition=Q(state="leased"), name="delivery_leased"
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk}"


class ReportKind(models.TextChoices):
    HARD = "hard", _("Hard bounce")
    SOFT = "soft", _("Soft bounce")
    COMPLAINT = "complaint", _("Complaint")
    REFUSED = "refused", _("Refused by the relay")


class BounceEvent(models.Model):
    """A bounce or complaint about one subscriber, with what it did to the score."""

    subscriber = models.ForeignKey(
        Subscriber, on_delete=models.PROTECT, related_name="bounce_events"
    )
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=ReportKind.choices)
    at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=300, blank=True)
    reporter = models.CharField(max_length=30, blank=True)
    score_after = models.DecimalField(max_digits=6, decimal_places=1)
    report = models.ForeignKey(
        "InboundReport", null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )

    class Meta:
        ordering = ["-at"]
        constraints: ClassVar = [
            # A complaint counts once per delivery, however often it is reported (the same
            # person pressing "spam" again, a provider resending its report).
            models.UniqueConstraint(
                fields=["delivery"],
                condition=Q(kind="complaint"),
                name="complaint_once_per_delivery",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.subscriber_id}"


class InboundReport(models.Model):
    """A message that came back to the bounce domain; kept once (by hash) and what it did."""

    sha256 = models.CharField(max_length=64, unique=True)
    recipient = models.CharField(max_length=254)
    received_at = models.DateTimeField(default=timezone.now)
    type = models.CharField(max_length=16)  # dsn, arf, unsubscribe, unknown
    reporter = models.CharField(max_length=30, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    # What the parser read of it (reports.essentials: header fields, report parts, beginnings
    # of text parts), emptied after NEWSLETTER_RETENTION_DAYS; `size` is what arrived.
    raw = models.BinaryField()
    size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} to {self.recipient}"


class SenderLimit(models.Model):
    """A member's sending rate: admins raise it for a member with a big list."""

    member = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="newsletter_limit"
    )
    # Empty: the co-op's default (NEWSLETTER_RATE_PER_MINUTE).
    per_minute = models.PositiveIntegerField(null=True, blank=True)
    # The current minute's window, counted at claim time (see services._allowance).
    window_start = models.DateTimeField(null=True, blank=True)
    window_used = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.member_id}: {self.per_minute}/min"
