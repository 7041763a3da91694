"""Hosting: nodes (servers), members' sites on them, and the jobs that make nodes match."""

from __future__ import annotations

import secrets
import uuid
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class NodeStatus(models.TextChoices):
    NEW = "new", _("New")
    AVAILABLE = "available", _("Available")
    DRAINING = "draining", _("Draining")
    DOWN = "down", _("Down")


class NodeKind(models.TextChoices):
    HOSTING = "hosting", _("Hosting")
    ASTERISK = "asterisk", _("Asterisk")
    MAIL = "mail", _("Mail relay")


class Node(models.Model):
    """A server of the co-op. Hosting nodes run sites; the panel reaches their agent only
    through SSH (or locally). Every node is deployed with its kind's playbook."""

    name = models.CharField(max_length=63, unique=True)
    kind = models.CharField(max_length=16, choices=NodeKind.choices, default=NodeKind.HOSTING)
    # Ansible logs in as this user (root, or an admin with sudo) to enroll and update the node.
    admin_user = models.CharField(max_length=32, default="root")
    # Variables for the node's playbook (ports, paths); the inventory hands them to Ansible.
    ansible_vars = models.JSONField(default=dict, blank=True)
    transport = models.CharField(
        max_length=8, choices=[("ssh", "SSH"), ("local", _("Local"))], default="ssh"
    )
    ssh_host = models.CharField(max_length=255, blank=True)
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_user = models.CharField(max_length=32, default="panel-agent")
    # Pinned when the node is enrolled; a different key is refused, never learnt.
    host_key = models.CharField(max_length=1000, blank=True)
    local_config = models.CharField(max_length=500, blank=True)
    capacity = models.PositiveIntegerField(default=100, help_text=_("How many sites it takes."))
    monthly_cost = models.DecimalField(max_digits=24, decimal_places=6, default=0)
    cost_source = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.NEW)
    # Where members point their names (A and AAAA records); a name proves itself by that.
    public_ipv4 = models.GenericIPAddressField(protocol="IPv4", null=True, blank=True)
    public_ipv6 = models.GenericIPAddressField(protocol="IPv6", null=True, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProofMethod(models.TextChoices):
    DNS = "dns", _("its DNS points at the co-op")
    TXT = "txt", _("a TXT record with its token")
    RESERVED = "reserved", _("a reserved name, which no one can own")
    OWNER = "owner", _("a name under a domain the member proved")
    ADMIN = "admin", _("confirmed by an admin")
    EXISTING = "existing", _("held before proofs were asked for")


def new_proof_token() -> str:
    return f"commune-panel-{secrets.token_hex(16)}"


class ClaimedName(models.Model):
    """A domain a member claims for a site: served only once proved to be theirs.

    Proof is DNS that points at the site's node (A/AAAA to its address, a CNAME to the
    co-op's domain) or a TXT record ``_commune-panel.NAME`` that carries ``proof_token``.
    Until then nothing of it reaches a node, and it keeps no one else from the name.
    """

    claimed_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_how = models.CharField(max_length=16, choices=ProofMethod.choices, blank=True)
    proof_token = models.CharField(max_length=64, default=new_proof_token)
    checked_at = models.DateTimeField(null=True, blank=True)
    # What the last check found, for the member ("A: 192.0.2.1; TXT: none").
    check_note = models.CharField(max_length=500, blank=True)

    class Meta:
        abstract = True

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


class SiteState(models.TextChoices):
    PENDING = "pending", _("Being set up")
    ACTIVE = "active", _("Active")
    SUSPENDED = "suspended", _("Suspended")
    DELETED = "deleted", _("Deleted (can be undone)")
    PURGED = "purged", _("Purged")


class SiteKind(models.TextChoices):
    STATIC = "static", _("Static files")
    PHP = "php", _("PHP")


class Site(ClaimedName):
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sites"
    )
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="sites")
    domain = models.CharField(_("domain"), max_length=253)
    kind = models.CharField(max_length=8, choices=SiteKind.choices, default=SiteKind.STATIC)
    quota_mb = models.PositiveIntegerField(default=1024)
    state = models.CharField(max_length=16, choices=SiteState.choices, default=SiteState.PENDING)
    suspended_by_admin = models.BooleanField(default=False)
    tls = models.BooleanField(default=False)
    # Bumped by every change of the desired spec; a job carries the generation it applies.
    generation = models.PositiveIntegerField(default=1)
    applied_generation = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)
    purge_after = models.DateTimeField(null=True, blank=True)
    backup_path = models.CharField(max_length=500, blank=True)
    # Metering: the agent's cumulative transfer counter as last recorded, and the moment up to
    # which disk space has been charged.
    transfer_seen = models.BigIntegerField(default=0)
    disk_metered_at = models.DateTimeField(null=True, blank=True)
    # Disk use as the node last reported it (usage.report, hourly), against quota_mb; the
    # member is emailed once each time it crosses HOSTING_QUOTA_WARN_PERCENT (warned_at set
    # until it drops below again).
    disk_bytes = models.BigIntegerField(default=0)
    disk_measured_at = models.DateTimeField(null=True, blank=True)
    quota_warned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["domain"]
        constraints: ClassVar = [
            # A proved domain belongs to one live site, whoever's; purged sites free their
            # names. Unproved claims may be many: a claim alone must not lock out the owner.
            models.UniqueConstraint(
                fields=["domain"],
                condition=~Q(state="purged") & Q(verified_at__isnull=False),
                name="site_domain_held_unique",
            )
        ]

    def __str__(self) -> str:
        return self.domain

    @property
    def system_user(self) -> str:
        return f"s{self.pk}"

    @property
    def quota_bytes(self) -> int:
        return self.quota_mb * 1024 * 1024

    @property
    def quota_percent(self) -> int:
        return int(self.disk_bytes * 100 // self.quota_bytes) if self.quota_mb else 0


class SiteAlias(ClaimedName):
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="aliases")
    domain = models.CharField(max_length=253)

    class Meta:
        ordering = ["domain"]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["domain"],
                condition=Q(verified_at__isnull=False),
                name="alias_domain_held_unique",
            )
        ]

    def __str__(self) -> str:
        return self.domain


class SshKey(models.Model):
    """A member's public key; it opens SFTP on all of that member's sites."""

    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ssh_keys"
    )
    name = models.CharField(max_length=100)
    public_key = models.CharField(max_length=9000)
    fingerprint = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["member", "fingerprint"], name="ssh_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class SiteDatabase(models.Model):
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="databases")
    engine = models.CharField(
        max_length=16, choices=[("mariadb", "MariaDB"), ("postgresql", "PostgreSQL")]
    )
    name = models.CharField(max_length=63, unique=True)
    db_user = models.CharField(max_length=63)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class Certificate(models.Model):
    site = models.OneToOneField(Site, on_delete=models.CASCADE, related_name="certificate")
    domains = models.JSONField(default=list)
    not_after = models.CharField(max_length=64, blank=True)
    issued_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Certificate of {self.site}"


class JobState(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    OK = "ok", _("Done")
    SOFT_ERROR = "soft_error", _("Failed, will retry")
    HARD_ERROR = "hard_error", _("Failed")


class Job(models.Model):
    """One request to a node's agent, retried until it succeeds or cannot."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="jobs")
    site = models.ForeignKey(
        Site, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    verb = models.CharField(max_length=32)
    spec = models.JSONField(default=dict)
    generation = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    admins_told = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes: ClassVar = [
            models.Index(fields=["state", "next_retry_at"], name="job_retry"),
        ]
        constraints: ClassVar = [
            # At most one job in flight per site: the database says no to a second one.
            models.UniqueConstraint(
                fields=["site"], condition=Q(state="running"), name="job_one_running_per_site"
            )
        ]

    def __str__(self) -> str:
        return f"{self.verb} {self.site or self.node} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in (JobState.OK, JobState.HARD_ERROR)


class EnrollmentState(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    OK = "ok", _("Done")
    FAILED = "failed", _("Failed")


class Enrollment(models.Model):
    """One run of a node's playbook, started from the browser; its log grows as it runs."""

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="enrollments")
    state = models.CharField(
        max_length=16, choices=EnrollmentState.choices, default=EnrollmentState.PENDING
    )
    host_key = models.CharField(max_length=1000, blank=True)  # as seen on first contact
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    changed = models.PositiveIntegerField(default=0)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints: ClassVar = [
            # One run at a time per node: two playbooks on one server would trip over each other.
            models.UniqueConstraint(
                fields=["node"],
                condition=Q(state__in=["pending", "running"]),
                name="enrollment_one_in_flight",
            )
        ]

    def __str__(self) -> str:
        return f"enrollment {self.pk} of {self.node}"
