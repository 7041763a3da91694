"""Hosting write path: sites, keys, certificates, nodes, and the jobs that carry them out.

Every change bumps the site's generation and enqueues one job (after commit) with the full
desired spec; the agent makes the node match it. Jobs are claimed with a guarded UPDATE, at
most one runs per site (a partial unique index), transient errors retry with exponential
backoff, and admins are told when a job gives up.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import mail_admins
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone
from django.utils.translation import gettext as _

from panel.audit import audit_record, snapshot
from panel.models import Membership, MembershipStatus, User
from panel.services import record_usage
from panel.services.ledger import LedgerError, cost_rate_at
from panel.tasking import enqueue_on_commit
from provisioning import ansible, dnsproof, ssh
from provisioning.models import (
    Certificate,
    Enrollment,
    EnrollmentState,
    Job,
    JobState,
    Node,
    NodeKind,
    NodeStatus,
    ProofMethod,
    Site,
    SiteAlias,
    SiteDatabase,
    SiteKind,
    SiteState,
    SshKey,
)
from provisioning.validation import clean_domain, clean_public_key

log = logging.getLogger(__name__)
SITE_FIELDS = (
    "domain",
    "kind",
    "state",
    "node",
    "tls",
    "generation",
    "suspended_by_admin",
    "verified_how",
)
LIVE = ~Q(state=SiteState.PURGED)


class HostingError(Exception):
    """A hosting action that cannot be done now; the message is for people."""


# Nodes ----------------------------------------------------------------------------------------


def endpoint_for(node: Node) -> ssh.Endpoint:
    return ssh.Endpoint(
        host=node.ssh_host,
        port=node.ssh_port,
        user=node.ssh_user,
        host_key=node.host_key,
        transport=node.transport,
        local_config=node.local_config,
    )


def pick_node() -> Node:
    """The available node with the most room; locked, so that two creations do not overfill it."""
    nodes = list(
        Node.objects.select_for_update()
        .filter(status=NodeStatus.AVAILABLE, kind=NodeKind.HOSTING)
        .order_by("name")
    )
    used = dict(
        Site.objects.filter(node__in=nodes)
        .exclude(state=SiteState.PURGED)
        .values("node")
        .annotate(n=Count("id"))
        .values_list("node", "n")
    )
    roomy = [n for n in nodes if used.get(n.pk, 0) < n.capacity]
    node = min(roomy, key=lambda n: (used.get(n.pk, 0), n.name), default=None)
    if node is None:
        raise HostingError(_("No server has room for a new site right now; the admins were told."))
    return node


@transaction.atomic
def node_check(*, node: Node, actor: User | None) -> Job:
    """Ask the node's agent for its facts; a success makes a new node available."""
    return _enqueue(node=node, site=None, verb="node.facts", spec={}, actor=actor)


NODE_FIELDS = ("status", "host_key", "kind")
# Queue wait plus the playbook's timeout, with room to spare.
ENROLLMENT_STALE_AFTER = timedelta(seconds=ansible.RUN_TIMEOUT_S + 1800)


@transaction.atomic
def node_enroll(*, node: Node, actor: User) -> Enrollment:
    """Start deploying a node with its kind's playbook; the log shows on the node's page.

    The panel's SSH key must be authorised for the node's admin user first (the page says
    which key). One run at a time per node: a second click while one runs is refused.
    """
    # A run still "in flight" long after the playbook's own timeout lost its worker (killed,
    # machine rebooted): it would block the node for ever, so it is failed here first.
    stale = Enrollment.objects.filter(
        node=node,
        state__in=[EnrollmentState.PENDING, EnrollmentState.RUNNING],
        created_at__lt=timezone.now() - ENROLLMENT_STALE_AFTER,
    )
    for enrollment_id in stale.values_list("pk", flat=True):
        if Enrollment.objects.filter(
            pk=enrollment_id, state__in=[EnrollmentState.PENDING, EnrollmentState.RUNNING]
        ).update(
            state=EnrollmentState.FAILED,
            error=_("Abandoned: no worker finished this run."),
            finished_at=timezone.now(),
        ):
            audit_record(
                actor=actor,
                action="node.enroll_abandoned",
                obj=node,
                owner=None,
                after={"enrollment": enrollment_id},
            )
    try:
        with transaction.atomic():
            enrollment = Enrollment.objects.create(node=node, actor=actor)
    except IntegrityError:
        raise HostingError(_("This node is being enrolled already.")) from None
    audit_record(
        actor=actor,
        action="node.enroll_started",
        obj=node,
        owner=None,
        after={"enrollment": enrollment.pk, "kind": node.kind},
    )
    from provisioning import tasks

    enqueue_on_commit(tasks.enroll_node, enrollment.pk)
    return enrollment


class _LogWriter:
    """Appends playbook output to the enrollment row, a few times a second (not per line)."""

    def __init__(self, enrollment_id: int) -> None:
        self.enrollment_id = enrollment_id
        self.pending: list[str] = []
        self.flushed = time.monotonic()

    def line(self, text: str) -> None:
        self.pending.append(text.rstrip("\n") + "\n")
        if time.monotonic() - self.flushed > 0.3:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            chunk = "".join(self.pending)
            self.pending = []
            Enrollment.objects.filter(pk=self.enrollment_id).update(
                log=Concat(F("log"), Value(chunk))
            )
        self.flushed = time.monotonic()


def enrollment_run(*, enrollment_id: int) -> Enrollment:
    """The task's body: first contact, the playbook, then the host key pinned and the node on.

    Claimed with a guarded update, so a redelivered task does not run the playbook twice at
    once; a run that died half-way is marked failed by the next claim attempt's admin click.
    """
    if not Enrollment.objects.filter(pk=enrollment_id, state=EnrollmentState.PENDING).update(
        state=EnrollmentState.RUNNING, started_at=timezone.now()
    ):
        return Enrollment.objects.get(pk=enrollment_id)
    enrollment = Enrollment.objects.select_related("node").get(pk=enrollment_id)
    node = enrollment.node
    log = _LogWriter(enrollment.pk)
    try:
        outcome = _enroll(enrollment, node, log)
    except (ansible.AnsibleError, ssh.AgentError) as exc:
        log.line(f"ERROR: {exc}")
        log.flush()
        _enroll_finish(enrollment, node, ok=False, error=str(exc))
    else:
        log.flush()
        ok = outcome.status == "successful" and outcome.returncode == 0
        error = "" if ok else f"the playbook ended {outcome.status} (exit {outcome.returncode})"
        _enroll_finish(enrollment, node, ok=ok, error=error, changed=outcome.changed)
    enrollment.refresh_from_db()
    return enrollment


def _enroll(enrollment: Enrollment, node: Node, log: _LogWriter) -> ansible.Outcome:
    seen = ssh.scan_host_key(node.ssh_host, node.ssh_port)
    log.line(f"Host key of {node.ssh_host}:{node.ssh_port}: {seen} ({ssh.fingerprint(seen)})")
    if node.host_key and node.host_key.split()[:2] != seen.split()[:2]:
        raise ansible.AnsibleError(
            f"the server's host key is not the one entered for this node "
            f"({ssh.fingerprint(node.host_key)}); nothing was run",
            permanent=True,
        )
    Enrollment.objects.filter(pk=enrollment.pk).update(host_key=seen)
    extra = {
        **(node.ansible_vars or {}),
        "hosting_node_panel_public_key": ssh.panel_public_key(),
        "hosting_node_name": node.name,
    }
    log.line(f"Running {ansible.PLAYBOOKS.get(node.kind, '?')} as {node.admin_user}")
    return ansible.run(
        target=ansible.Target(
            name=node.name,
            host=node.ssh_host,
            port=node.ssh_port,
            user=node.admin_user,
            host_key=seen,
            kind=node.kind,
        ),
        extra_vars=extra,
        on_line=log.line,
        private_key_file=ssh.ensure_panel_key(),
    )


@transaction.atomic
def _enroll_finish(
    enrollment: Enrollment, node: Node, *, ok: bool, error: str, changed: int = 0
) -> None:
    locked = Node.objects.select_for_update().get(pk=node.pk)
    before = snapshot(locked, NODE_FIELDS)
    Enrollment.objects.filter(pk=enrollment.pk).update(
        state=EnrollmentState.OK if ok else EnrollmentState.FAILED,
        error=error[:2000],
        changed=changed,
        finished_at=timezone.now(),
    )
    if ok:
        seen = Enrollment.objects.values_list("host_key", flat=True).get(pk=enrollment.pk)
        locked.host_key = seen
        if locked.status in (NodeStatus.NEW, NodeStatus.DOWN):
            locked.status = NodeStatus.AVAILABLE
        locked.save(update_fields=["host_key", "status"])
    audit_record(
        actor=None,
        action="node.enrolled" if ok else "node.enroll_failed",
        obj=locked,
        owner=None,
        before=before,
        after=snapshot(locked, NODE_FIELDS),
        note=error[:500],
    )
    if not ok:
        mail_admins(
            f"Enrolling {locked.name} failed",
            f"{error}\n\nThe log is on the node's page in the panel.",
            fail_silently=True,
        )


@transaction.atomic
def node_drain(*, node: Node, actor: User) -> Node:
    before = snapshot(node, ("status",))
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.DRAINING)
    node.refresh_from_db()
    audit_record(
        actor=actor,
        action="node.drained",
        obj=node,
        owner=None,
        before=before,
        after=snapshot(node, ("status",)),
    )
    return node


# Sites ----------------------------------------------------------------------------------------


def _require_member(member: User) -> None:
    # Asked of the database, not of a possibly stale related object on the user.
    if not Membership.objects.filter(user=member, status=MembershipStatus.MEMBER).exists():
        raise HostingError(_("Only members in good standing may order services."))


# Domain claims -------------------------------------------------------------------------------
#
# A name is *held* by a member once proved (or needing no proof); only held names reach a
# node, and only held names keep others out: a claim alone must not lock out the owner. A
# member cannot claim a name another member holds, nor a name under it, nor a name above it
# (bob's www.alice.localhost under alice's alice.localhost).

# One lock for every change of who holds what: the parent/child rule spans rows that no
# unique index covers. SQLite (the demo) serialises writers anyway.
CLAIMS_LOCK = 0x636C61696D  # "claim"


def _lock_claims() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CLAIMS_LOCK])


def _parents(name: str) -> list[str]:
    """The domains above ``name`` (www.a.example.org: a.example.org, example.org)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


def _held(*, exclude_member: User | None = None, member: User | None = None) -> list[Any]:
    """Querysets of held names (sites' and aliases'), of one member or of everyone else."""
    sites = Site.objects.filter(LIVE, verified_at__isnull=False)
    aliases = SiteAlias.objects.filter(verified_at__isnull=False).exclude(
        site__state=SiteState.PURGED
    )
    if exclude_member is not None:
        sites = sites.exclude(member=exclude_member)
        aliases = aliases.exclude(site__member=exclude_member)
    if member is not None:
        sites = sites.filter(member=member)
        aliases = aliases.filter(site__member=member)
    return [sites, aliases]


def _conflict(name: str, member: User) -> str | None:
    """Why ``member`` may not hold ``name`` because of another member's names, or None."""
    for held in _held(exclude_member=member):
        if held.filter(domain=name).exists():
            return _("%(name)s is already used by another site.") % {"name": name}
        above = held.filter(domain__in=_parents(name)).values_list("domain", flat=True).first()
        if above:
            return _("%(name)s is under %(held)s, which another member holds.") % {
                "name": name,
                "held": above,
            }
        below = held.filter(domain__endswith=f".{name}").values_list("domain", flat=True).first()
        if below:
            return _("%(name)s has %(held)s under it, which another member holds.") % {
                "name": name,
                "held": below,
            }
    return None


def _claim_allowed(name: str, member: User) -> None:
    mine = Site.objects.filter(LIVE, member=member, domain=name).exists() or (
        SiteAlias.objects.filter(site__member=member, domain=name)
        .exclude(site__state=SiteState.PURGED)
        .exists()
    )
    if mine:
        raise HostingError(_("%(name)s is one of your sites' names already.") % {"name": name})
    reason = _conflict(name, member)
    if reason:
        raise HostingError(reason)


def _proof_needed(name: str, member: User) -> str:
    """The proof a name has without DNS ("" if it needs one): reserved names (no one can
    own them), and names under a domain the member holds already."""
    for suffix in settings.HOSTING_NAMES_WITHOUT_PROOF:
        suffix = suffix.lower().strip(".")
        if name == suffix or name.endswith(f".{suffix}"):
            return ProofMethod.RESERVED
    if any(held.filter(domain__in=_parents(name)).exists() for held in _held(member=member)):
        return ProofMethod.OWNER
    return ""


def _prove(claim: Site | SiteAlias, *, site: Site, how: str, actor: User | None, note: str) -> None:
    """Mark one of the site's names as held (the claims lock is held), then serve it."""
    reason = _conflict(claim.domain, site.member)
    if reason:
        raise HostingError(reason)
    now = timezone.now()
    try:
        with transaction.atomic():
            type(claim).objects.filter(pk=claim.pk, verified_at__isnull=True).update(
                verified_at=now, verified_how=how, checked_at=now, check_note=note[:500]
            )
    except IntegrityError:
        raise HostingError(
            _("%(name)s is already used by another site.") % {"name": claim.domain}
        ) from None
    audit_record(
        actor=actor,
        action="site.domain_verified",
        obj=site,
        owner=site.member,
        after={"domain": claim.domain, "how": how},
        note=note[:500],
    )
    site.refresh_from_db()
    if site.verified:
        _site_changed(site, actor=actor, action="site.names_changed", before=None)


def _claims_of(site: Site) -> list[Site | SiteAlias]:
    """The site's names, the site's own first and parents before their subdomains."""
    aliases = sorted(site.aliases.all(), key=lambda a: (a.domain.count("."), a.domain))
    return [site, *aliases]


def domain_check(*, site: Site, actor: User | None) -> list[tuple[str, bool, str]]:
    """Look up the site's unproved names now ("check now", and the beat job with no actor).

    Proved ones are served at once (and a site proved by pointing at us gets a certificate
    once it is up). The DNS is asked outside any transaction: a slow server must not hold
    locks. Returns (name, proved, what DNS said) per name that was checked.
    """
    if (
        actor is not None
        and site.member_id != actor.pk
        and not actor.has_perm("provisioning.change_site")
    ):
        raise HostingError(_("This is not your site."))
    site = Site.objects.select_related("node", "member").get(pk=site.pk)
    if site.state not in (SiteState.PENDING, SiteState.ACTIVE, SiteState.SUSPENDED):
        raise HostingError(_("Only live sites' names are checked."))
    addresses = {str(a) for a in (site.node.public_ipv4, site.node.public_ipv6) if a}
    results = []
    for claim in _claims_of(site):
        if claim.verified:
            continue
        name = claim.domain
        how = _proof_needed(name, site.member)
        note = ""
        if not how:
            finding = dnsproof.look_up(
                name,
                token=claim.proof_token,
                addresses=addresses,
                cname_target=settings.HOSTING_CNAME_TARGET,
            )
            how, note = finding.proof, finding.note
        with transaction.atomic():
            _lock_claims()
            type(claim).objects.filter(pk=claim.pk).update(
                checked_at=timezone.now(), check_note=note[:500]
            )
            if how:
                try:
                    _prove(claim, site=site, how=how, actor=actor, note=note)
                except HostingError as exc:
                    how, note = "", str(exc)
                    type(claim).objects.filter(pk=claim.pk).update(check_note=note[:500])
        results.append((name, bool(how), note))
    return results


def domains_check_pending(*, now: Any = None) -> int:
    """Beat: check the unproved names of live sites claimed in the last days; how many were
    proved. Older claims are checked when their member asks (the button)."""
    since = (now or timezone.now()) - timedelta(days=settings.HOSTING_PROOF_RECHECK_DAYS)
    live = [SiteState.PENDING, SiteState.ACTIVE, SiteState.SUSPENDED]
    site_ids = set(
        Site.objects.filter(
            state__in=live, verified_at__isnull=True, claimed_at__gte=since
        ).values_list("pk", flat=True)
    ) | set(
        SiteAlias.objects.filter(
            site__state__in=live, verified_at__isnull=True, claimed_at__gte=since
        ).values_list("site_id", flat=True)
    )
    proved = 0
    for site_id in sorted(site_ids):
        try:
            results = domain_check(site=Site.objects.get(pk=site_id), actor=None)
        except HostingError:
            continue
        proved += sum(1 for _name, ok, _note in results if ok)
    return proved


@transaction.atomic
def domain_confirm(*, site: Site, alias: SiteAlias | None, actor: User, reason: str) -> None:
    """An admin holds a name for its site without DNS proof (a dispute settled by hand)."""
    if not actor.has_perm("provisioning.change_site"):
        raise HostingError(_("Only admins can confirm a name without proof."))
    reason = reason.strip()
    if not reason:
        raise HostingError(_("Say why the name is confirmed without proof."))
    _lock_claims()
    site = Site.objects.select_for_update().select_related("node", "member").get(pk=site.pk)
    claim: Site | SiteAlias = (
        site if alias is None else SiteAlias.objects.get(pk=alias.pk, site=site)
    )
    if claim.verified:
        raise HostingError(_("This name is proved already."))
    _prove(claim, site=site, how=ProofMethod.ADMIN, actor=actor, note=reason)


def site_spec(site: Site, *, state: str | None = None) -> dict[str, Any]:
    """The full desired state of a site, as the agent takes it."""
    keys = list(
        SshKey.objects.filter(member_id=site.member_id).values_list("public_key", flat=True)
    )
    wanted = state or ("suspended" if site.state == SiteState.SUSPENDED else "active")
    held = site.aliases.filter(verified_at__isnull=False).values_list("domain", flat=True)
    return {
        "user": site.system_user,
        # Only held names: an unproved one never reaches a node.
        "domains": [site.domain, *held],
        "kind": site.kind,
        "quota_mb": site.quota_mb,
        "state": wanted,
        "tls": site.tls,
        "keys": keys,
    }


def _site_changed(
    site: Site,
    *,
    actor: User | None,
    action: str,
    before: dict[str, Any] | None,
    verb: str = "site.ensure",
    spec: dict[str, Any] | None = None,
) -> Job | None:
    """Record a change of the site and enqueue the job that applies it.

    A site whose own name is not proved yet has nothing on a node and gets no job: its first
    site.ensure comes when the name is proved.
    """
    Site.objects.filter(pk=site.pk).update(generation=F("generation") + 1)
    site.refresh_from_db()
    audit_record(
        actor=actor,
        action=action,
        obj=site,
        owner=site.member,
        before=before,
        after=snapshot(site, SITE_FIELDS),
    )
    if verb in ("site.ensure", "site.suspend", "site.resume") and not site.verified:
        return None
    return _enqueue(node=site.node, site=site, verb=verb, spec=spec or site_spec(site), actor=actor)


@transaction.atomic
def site_create(*, member: User, domain: str, kind: str = SiteKind.STATIC) -> Site:
    _require_member(member)
    if kind not in SiteKind.values:
        raise HostingError(_("Choose static or PHP."))
    try:
        name = clean_domain(domain)
    except ValidationError as exc:
        raise HostingError(" ".join(exc.messages)) from None
    _lock_claims()
    _claim_allowed(name, member)
    proof = _proof_needed(name, member)
    node = pick_node()
    try:
        with transaction.atomic():
            site = Site.objects.create(
                member=member,
                node=node,
                domain=name,
                kind=kind,
                verified_at=timezone.now() if proof else None,
                verified_how=proof,
            )
    except IntegrityError:
        raise HostingError(
            _("%(name)s is already used by another site.") % {"name": name}
        ) from None
    _site_changed(site, actor=member, action="site.created", before=None)
    return site


def _owned(site: Site, actor: User) -> Site:
    """The site as it is now (locked), if ``actor`` may change it."""
    if site.member_id != actor.pk and not actor.has_perm("provisioning.change_site"):
        raise HostingError(_("This is not your site."))
    return Site.objects.select_for_update().select_related("node", "member").get(pk=site.pk)


@transaction.atomic
def site_alias_add(*, site: Site, domain: str, actor: User) -> SiteAlias:
    site = _owned(site, actor)
    if site.state not in (SiteState.ACTIVE, SiteState.PENDING, SiteState.SUSPENDED):
        raise HostingError(_("Aliases can be added to live sites only."))
    try:
        name = clean_domain(domain)
    except ValidationError as exc:
        raise HostingError(" ".join(exc.messages)) from None
    _lock_claims()
    _claim_allowed(name, site.member)
    proof = _proof_needed(name, site.member)
    before = snapshot(site, SITE_FIELDS)
    try:
        with transaction.atomic():
            alias = SiteAlias.objects.create(
                site=site,
                domain=name,
                verified_at=timezone.now() if proof else None,
                verified_how=proof,
            )
    except IntegrityError:
        raise HostingError(
            _("%(name)s is already used by another site.") % {"name": name}
        ) from None
    if proof:
        _site_changed(site, actor=actor, action="site.alias_added", before=before)
    else:
        # Nothing changes on the node until the name is proved.
        audit_record(
            actor=actor,
            action="site.alias_added",
            obj=site,
            owner=site.member,
            after={"alias": name, "proved": False},
        )
    return alias


@transaction.atomic
def site_alias_remove(*, alias: SiteAlias, actor: User) -> None:
    site = alias.site
    site = _owned(site, actor)
    before = snapshot(site, SITE_FIELDS)
    alias.delete()
    _site_changed(site, actor=actor, action="site.alias_removed", before=before)


def _set_state(
    site: Site,
    *,
    actor: User,
    to: str,
    allowed: set[str],
    action: str,
    verb: str = "site.ensure",
    **extra: Any,
) -> Job | None:
    before = snapshot(site, SITE_FIELDS)
    moved = Site.objects.filter(pk=site.pk, state__in=allowed).update(state=to, **extra)
    if not moved:
        raise HostingError(
            _("The site is %(state)s; that cannot be done now.")
            % {"state": site.get_state_display()}
        )
    site.refresh_from_db()
    spec = site_spec(site) if verb != "site.remove" else {"user": site.system_user}
    return _site_changed(site, actor=actor, action=action, before=before, verb=verb, spec=spec)


@transaction.atomic
def site_suspend(*, site: Site, actor: User) -> Job | None:
    site = _owned(site, actor)
    if not site.verified:
        raise HostingError(_("This site waits for proof of its name: nothing is served yet."))
    by_admin = actor.pk != site.member_id
    return _set_state(
        site,
        actor=actor,
        to=SiteState.SUSPENDED,
        allowed={SiteState.ACTIVE, SiteState.PENDING},
        action="site.suspended",
        suspended_by_admin=by_admin,
    )


@transaction.atomic
def site_resume(*, site: Site, actor: User) -> Job | None:
    site = _owned(site, actor)
    if site.suspended_by_admin and not actor.has_perm("provisioning.change_site"):
        raise HostingError(_("An admin suspended this site; ask them to resume it."))
    return _set_state(
        site,
        actor=actor,
        to=SiteState.ACTIVE,
        allowed={SiteState.SUSPENDED},
        action="site.resumed",
        suspended_by_admin=False,
    )


@transaction.atomic
def site_delete(*, site: Site, actor: User) -> Job | None:
    """Suspend and back up now; the files go only after the grace period (undo until then)."""
    site = _owned(site, actor)
    now = timezone.now()
    return _set_state(
        site,
        actor=actor,
        to=SiteState.DELETED,
        allowed={SiteState.ACTIVE, SiteState.SUSPENDED, SiteState.PENDING},
        action="site.deleted",
        verb="site.remove",
        deleted_at=now,
        purge_after=now + timedelta(days=settings.SITE_PURGE_AFTER_DAYS),
    )


@transaction.atomic
def site_undelete(*, site: Site, actor: User) -> Job | None:
    site = _owned(site, actor)
    if site.purge_after and site.purge_after <= timezone.now():
        raise HostingError(_("The grace period is over; the site cannot be brought back."))
    to = SiteState.SUSPENDED if site.suspended_by_admin else SiteState.ACTIVE
    if not site.verified:
        to = SiteState.PENDING  # back to waiting for its proof
    return _set_state(
        site,
        actor=actor,
        to=to,
        allowed={SiteState.DELETED},
        action="site.undeleted",
        deleted_at=None,
        purge_after=None,
    )


@transaction.atomic
def site_set_quota(*, site: Site, quota_mb: int, actor: User) -> Job | None:
    """An admin gives a site more (or less) disk; the node enforces it with the next job."""
    if not actor.has_perm("provisioning.change_site"):
        raise HostingError(_("Only admins change a site's disk quota."))
    if not 10 <= quota_mb <= 10_000_000:
        raise HostingError(_("A quota is from 10 MB to 10 TB."))
    site = _owned(site, actor)
    before = {"quota_mb": site.quota_mb}
    Site.objects.filter(pk=site.pk).update(quota_mb=quota_mb)
    site.refresh_from_db()
    audit_record(
        actor=actor,
        action="site.quota_changed",
        obj=site,
        owner=site.member,
        before=before,
        after={"quota_mb": quota_mb},
    )
    return _site_changed(site, actor=actor, action="site.quota_applied", before=None)


def purge_due_sites(*, now: Any = None) -> int:
    """Enqueue the final removal of sites whose grace period ended (beat)."""
    now = now or timezone.now()
    count = 0
    for site in Site.objects.filter(state=SiteState.DELETED, purge_after__lte=now).select_related(
        "node"
    ):
        with transaction.atomic():
            if (
                Job.objects.filter(site=site, verb="site.purge")
                .exclude(state=JobState.HARD_ERROR)
                .exists()
            ):
                continue
            _enqueue(
                node=site.node,
                site=site,
                verb="site.purge",
                spec={"user": site.system_user},
                actor=None,
            )
            count += 1
    return count


@transaction.atomic
def cert_request(*, site: Site, actor: User) -> Job:
    """Get a TLS certificate from the ACME server for the site's names."""
    site = _owned(site, actor)
    if site.state != SiteState.ACTIVE:
        raise HostingError(_("Certificates are for active sites."))
    return _cert_job(site, actor=actor)


def _cert_job(site: Site, *, actor: User | None) -> Job:
    """The cert.ensure job for the site's held names (only those are served, and only
    those the ACME server may see asked for)."""
    spec = {
        "user": site.system_user,
        "domains": site_spec(site)["domains"],
        "directory": settings.ACME_DIRECTORY_URL,
        "email": settings.ACME_EMAIL,
    }
    audit_record(
        actor=actor,
        action="site.certificate_requested",
        obj=site,
        owner=site.member,
        after={"domains": spec["domains"]},
    )
    return _enqueue(node=site.node, site=site, verb="cert.ensure", spec=spec, actor=actor)


# Keys and databases ---------------------------------------------------------------------------


def _resync_member_sites(member: User, actor: User) -> None:
    for site in Site.objects.filter(
        member=member, state__in=[SiteState.ACTIVE, SiteState.SUSPENDED, SiteState.PENDING]
    ):
        _site_changed(site, actor=actor, action="site.keys_changed", before=None)


@transaction.atomic
def ssh_key_add(*, member: User, name: str, public_key: str) -> SshKey:
    try:
        line, fingerprint = clean_public_key(public_key)
    except ValidationError as exc:
        raise HostingError(" ".join(exc.messages)) from None
    name = name.strip()[:100] or fingerprint[:20]
    try:
        with transaction.atomic():
            key = SshKey.objects.create(
                member=member, name=name, public_key=line, fingerprint=fingerprint
            )
    except IntegrityError:
        raise HostingError(_("You added this key already.")) from None
    audit_record(
        actor=member,
        action="ssh_key.added",
        obj=key,
        owner=member,
        after={"name": name, "fingerprint": fingerprint},
    )
    _resync_member_sites(member, member)
    return key


@transaction.atomic
def ssh_key_remove(*, key: SshKey, actor: User) -> None:
    member = key.member
    if actor.pk != member.pk:
        raise HostingError(_("This is not your key."))
    audit_record(
        actor=actor,
        action="ssh_key.removed",
        obj=key,
        owner=member,
        before={"name": key.name, "fingerprint": key.fingerprint},
    )
    key.delete()
    _resync_member_sites(member, actor)


@transaction.atomic
def database_create(*, site: Site, engine: str, actor: User) -> tuple[SiteDatabase, str]:
    """A database with generated credentials; the password is returned once and never stored."""
    site = _owned(site, actor)
    if engine not in ("mariadb", "postgresql"):
        raise HostingError(_("Choose MariaDB or PostgreSQL."))
    number = site.databases.count() + 1
    name = f"{site.system_user}_{number}"
    password = secrets.token_urlsafe(24)
    database = SiteDatabase.objects.create(site=site, engine=engine, name=name, db_user=name)
    audit_record(
        actor=actor,
        action="site.database_created",
        obj=database,
        owner=site.member,
        after={"engine": engine, "name": name},
    )
    _enqueue(
        node=site.node,
        site=site,
        verb="db.ensure",
        spec={
            "user": site.system_user,
            "engine": engine,
            "name": name,
            "db_user": name,
            "password": password,
        },
        actor=actor,
    )
    return database, password


# Jobs -----------------------------------------------------------------------------------------


def _enqueue(
    *, node: Node, site: Site | None, verb: str, spec: dict[str, Any], actor: User | None
) -> Job:
    job = Job.objects.create(
        node=node,
        site=site,
        verb=verb,
        spec=spec,
        generation=site.generation if site else 0,
        actor=actor,
    )
    from provisioning.tasks import run_job

    enqueue_on_commit(run_job, job.pk)
    return job


def backoff_seconds(attempt: int) -> int:
    """2, 4, 8, ... seconds, at most 10 minutes."""
    return int(min(600, 2 ** max(1, attempt)))


def job_retry(*, job: Job, actor: User) -> Job:
    """A person asks for another try of a job that gave up."""
    with transaction.atomic():
        if job.site is not None:
            _owned(job.site, actor)
        restarted = Job.objects.filter(pk=job.pk, state=JobState.HARD_ERROR).update(
            state=JobState.PENDING, attempts=0, next_retry_at=None, error="", admins_told=False
        )
        if not restarted:
            raise HostingError(_("Only a failed job can be retried."))
        job.refresh_from_db()
        audit_record(
            actor=actor, action="job.retried", obj=job, owner=job.site.member if job.site else None
        )
        from provisioning.tasks import run_job

        enqueue_on_commit(run_job, job.pk)
    return job


class Retry(Exception):
    """The job should run again after ``delay`` seconds."""

    def __init__(self, delay: int) -> None:
        self.delay = delay


def job_run(*, job_id: int) -> Job:
    """Run one job (the task's body). Safe to call twice; the claim decides who runs it."""
    job = Job.objects.select_related("node", "site").get(pk=job_id)
    if job.state in (JobState.OK, JobState.HARD_ERROR, JobState.RUNNING):
        return job
    if (
        job.state == JobState.SOFT_ERROR
        and job.next_retry_at
        and job.next_retry_at > timezone.now()
    ):
        raise Retry(int((job.next_retry_at - timezone.now()).total_seconds()) + 1)
    if job.site is not None and job.generation and job.generation < job.site.applied_generation:
        Job.objects.filter(pk=job.pk, state__in=[JobState.PENDING, JobState.SOFT_ERROR]).update(
            state=JobState.OK, finished_at=timezone.now(), log="superseded by a newer change"
        )
        return Job.objects.get(pk=job.pk)
    try:
        with transaction.atomic():
            claimed = Job.objects.filter(
                pk=job.pk, state__in=[JobState.PENDING, JobState.SOFT_ERROR]
            ).update(state=JobState.RUNNING, attempts=F("attempts") + 1, started_at=timezone.now())
    except IntegrityError:
        raise Retry(2) from None  # another job of this site is running: wait our turn
    if not claimed:
        return job
    job.refresh_from_db()
    request = {"uuid": str(job.uuid), "verb": job.verb, "spec": job.spec}
    try:
        result = ssh.call_agent(endpoint_for(job.node), request)
        _check_served(job, result)
    except ssh.AgentError as exc:
        return _failed(job, exc)
    return _succeeded(job, result)


def _check_served(job: Job, result: dict[str, Any]) -> None:
    """A site job is done when the node serves what it should, not when files are written."""
    served = result.get("served")
    if not isinstance(served, dict):
        return
    suspended = job.spec.get("state") == "suspended" or job.verb == "site.suspend"
    wrong = {
        name: status
        for name, status in served.items()
        if (status != 503 if suspended else status not in (200, 301, 302, 403))
    }
    if wrong:
        raise ssh.AgentError(
            f"the node does not serve {', '.join(f'{n} (HTTP {s})' for n, s in wrong.items())} yet",
            permanent=False,
        )


def _failed(job: Job, exc: ssh.AgentError) -> Job:
    give_up = exc.permanent or job.attempts >= settings.JOB_MAX_ATTEMPTS
    state = JobState.HARD_ERROR if give_up else JobState.SOFT_ERROR
    delay = backoff_seconds(job.attempts)
    Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
        state=state,
        error=str(exc)[:2000],
        log=(job.log + f"\nattempt {job.attempts}: {exc}")[-4000:],
        next_retry_at=None if give_up else timezone.now() + timedelta(seconds=delay),
        finished_at=timezone.now() if give_up else None,
    )
    job.refresh_from_db()
    if give_up:
        _tell_admins(job)
        return job
    raise Retry(delay)


def _tell_admins(job: Job) -> None:
    told = Job.objects.filter(pk=job.pk, admins_told=False).update(admins_told=True)
    if told:
        mail_admins(
            f"Hosting job failed: {job.verb} on {job.node}",
            f"Job {job.uuid} ({job.verb}, site {job.site}) gave up after {job.attempts} "
            f"attempts:\n\n{job.error}\n",
            fail_silently=True,
        )


def _succeeded(job: Job, result: dict[str, Any]) -> Job:
    with transaction.atomic():
        Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
            state=JobState.OK,
            result=_scrub(result),
            spec=_scrub(job.spec),
            finished_at=timezone.now(),
            error="",
            log=(job.log + f"\nattempt {job.attempts}: ok")[-4000:],
        )
        job.refresh_from_db()
        site = job.site
        if job.verb == "node.facts":
            Node.objects.filter(pk=job.node_id).update(facts=result)
            Node.objects.filter(pk=job.node_id, status=NodeStatus.NEW).update(
                status=NodeStatus.AVAILABLE
            )
        elif site is not None:
            Site.objects.filter(pk=site.pk, applied_generation__lt=job.generation).update(
                applied_generation=job.generation
            )
            if job.verb in ("site.ensure", "site.suspend", "site.resume"):
                went_live = Site.objects.filter(pk=site.pk, state=SiteState.PENDING).update(
                    state=SiteState.ACTIVE
                )
                site.refresh_from_db()
                # A name proved by pointing at the node can pass HTTP-01 now: a certificate
                # follows at once. (A TXT proof says nothing about where the name points.)
                if went_live and site.verified_how == ProofMethod.DNS and not site.tls:
                    _cert_job(site, actor=None)
            elif job.verb == "site.remove":
                Site.objects.filter(pk=site.pk).update(
                    backup_path=str(result.get("backup", ""))[:500]
                )
            elif job.verb == "site.purge":
                Site.objects.filter(pk=site.pk, state=SiteState.DELETED).update(
                    state=SiteState.PURGED
                )
            elif job.verb == "cert.ensure":
                Certificate.objects.update_or_create(
                    site=site,
                    defaults={
                        "domains": job.spec.get("domains", []),
                        "not_after": result.get("not_after") or "",
                    },
                )
                Site.objects.filter(pk=site.pk).update(tls=True)
                site.refresh_from_db()
                _site_changed(site, actor=job.actor, action="site.tls_enabled", before=None)
    return job


def _scrub(data: dict[str, Any]) -> dict[str, Any]:
    """Passwords never stay in the database once the job is done."""
    return {k: ("(not stored)" if k == "password" else v) for k, v in data.items()}


def retry_stuck_jobs() -> int:
    """Re-send jobs whose message may have been lost (beat); the claim keeps them single."""
    from provisioning.tasks import run_job

    now = timezone.now()
    due = Job.objects.filter(
        Q(state=JobState.SOFT_ERROR, next_retry_at__lte=now)
        | Q(state=JobState.PENDING, created_at__lte=now - timedelta(minutes=2))
    ).values_list("pk", flat=True)[:500]
    count = 0
    for job_id in due:
        run_job.apply_async(args=(job_id,))
        count += 1
    # A worker that died mid-job leaves it running; after 15 minutes it counts as a soft error.
    Job.objects.filter(state=JobState.RUNNING, started_at__lte=now - timedelta(minutes=15)).update(
        state=JobState.SOFT_ERROR, next_retry_at=now, error="the worker stopped during the job"
    )
    return count


# Metering -------------------------------------------------------------------------------------

GB = Decimal(10**9)
HOURS_PER_MONTH = Decimal(24 * 30)  # disk is priced per GB-month of 30 days


def collect_usage(*, node: Node) -> int:
    """Ask one node for disk and transfer per site and record them at the node's cost rate."""
    result = ssh.call_agent(
        endpoint_for(node), {"uuid": str(_uuid()), "verb": "usage.report", "spec": {}}
    )
    return record_node_usage(node=node, report=result)


def _uuid() -> Any:
    import uuid

    return uuid.uuid4()


def _rate(node: Node, kind: str, day: Any) -> Any:
    try:
        return cost_rate_at(service="hosting", kind=f"{kind}.{node.name}", day=day)
    except LedgerError:
        return cost_rate_at(service="hosting", kind=kind, day=day)


def record_node_usage(*, node: Node, report: dict[str, Any]) -> int:
    """Disk as GB-months for the time since it was last charged; transfer as counter growth.

    Each site's figures are booked in one transaction with the site row locked, so a report
    processed twice charges nothing twice.
    """
    at = timezone.now()
    recorded = 0
    sites = {
        s.system_user: s for s in Site.objects.filter(node=node).exclude(state=SiteState.PURGED)
    }
    # Usage against quota first: it matters whether or not the costs can be booked.
    for user, figures in report.get("sites", {}).items():
        if user in sites and isinstance(figures, dict):
            _quota_watch(site=sites[user], disk_bytes=int(figures.get("disk_bytes", 0)), at=at)
    try:
        disk_rate = _rate(node, "disk", at.date())
        transfer_rate = _rate(node, "transfer", at.date())
    except LedgerError as exc:
        log.warning("no hosting cost rate: %s", exc)
        return 0
    for user, figures in report.get("sites", {}).items():
        if user not in sites:
            continue
        with transaction.atomic():
            site = Site.objects.select_for_update().get(pk=sites[user].pk)
            since = site.disk_metered_at or site.created_at
            hours = Decimal(max(0, int((at - since).total_seconds()))) / 3600
            disk_gb = Decimal(int(figures.get("disk_bytes", 0))) / GB
            quantity = (disk_gb * min(hours, HOURS_PER_MONTH) / HOURS_PER_MONTH).quantize(
                Decimal("0.000001")
            )
            if quantity > 0:
                record_usage(
                    member=site.member,
                    service="hosting",
                    kind="disk",
                    quantity=quantity,
                    unit=disk_rate.unit,
                    unit_cost=disk_rate.unit_cost,
                    cost_source=disk_rate,
                    occurred_at=at,
                    source_key=f"disk:{site.pk}:{at:%Y%m%d%H%M%S}",
                )
                recorded += 1
                Site.objects.filter(pk=site.pk).update(disk_metered_at=at)
            total = int(figures.get("transfer_bytes_total", 0))
            grown = total - site.transfer_seen if total >= site.transfer_seen else total
            amount = (Decimal(grown) / GB).quantize(Decimal("0.000001"))
            # Below a kilobyte the bytes wait for the next report instead of rounding away.
            if amount > 0:
                record_usage(
                    member=site.member,
                    service="hosting",
                    kind="transfer",
                    quantity=amount,
                    unit=transfer_rate.unit,
                    unit_cost=transfer_rate.unit_cost,
                    cost_source=transfer_rate,
                    occurred_at=at,
                    source_key=f"transfer:{site.pk}:{total}",
                )
                recorded += 1
                Site.objects.filter(pk=site.pk).update(transfer_seen=total)
    return recorded


@transaction.atomic
def _quota_watch(*, site: Site, disk_bytes: int, at: Any) -> None:
    """Record the site's disk use; email the member once each time it crosses the warning
    share of its quota (guarded updates: a report processed twice mails once)."""
    Site.objects.filter(pk=site.pk).update(disk_bytes=max(0, disk_bytes), disk_measured_at=at)
    site.refresh_from_db()
    over = site.quota_percent >= settings.HOSTING_QUOTA_WARN_PERCENT
    if over and Site.objects.filter(pk=site.pk, quota_warned_at__isnull=True).update(
        quota_warned_at=at
    ):
        audit_record(
            actor=None,
            action="site.quota_warned",
            obj=site,
            owner=site.member,
            after={"disk_bytes": site.disk_bytes, "quota_mb": site.quota_mb},
        )
        transaction.on_commit(lambda: _send_quota_warning(site.pk))
    elif not over and Site.objects.filter(pk=site.pk, quota_warned_at__isnull=False).update(
        quota_warned_at=None
    ):
        audit_record(
            actor=None,
            action="site.quota_below_warning",
            obj=site,
            owner=site.member,
            after={"disk_bytes": site.disk_bytes, "quota_mb": site.quota_mb},
        )


def _send_quota_warning(site_id: int) -> None:
    from panel.mail import send_templated_mail

    site = Site.objects.select_related("member").get(pk=site_id)
    try:
        send_templated_mail(
            "provisioning/email/quota_warning",
            to=site.member.email,
            context={"user": site.member, "site": site},
        )
    except OSError:
        # The warning is recorded (audit); a mail server that is down loses only the email.
        log.warning("quota warning for %s not sent", site.domain, exc_info=True)
