"""Sending domains: DKIM keys, the DNS check, verification, and who holds a name.

A claim (a member adding a domain) proves nothing and so holds nothing: several members may
claim one name, and anyone may claim gmail.com without locking its owner out. The DNS check
is the proof (the member's DKIM key published under the name, or aligned SPF), and the
first claim proven holds the name: no other member can then add it or a name under it, nor
verify a claim of it, while the holder's proof stands. The other claimants are emailed. A
holder whose record is gone loses the name to the next claim proven (the DNS is the truth);
an admin's override, with its reason audited, holds until another override.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import dkim, dns, validation
from newsletters.models import (
    MailingList,
    SendingDomain,
)
from newsletters.services.common import NewsletterError, _require_member, _valid
from panel.audit import audit_record, snapshot
from panel.models import User
from panel.tasking import enqueue_on_commit

# Sending domains -------------------------------------------------------------------------

DOMAIN_FIELDS = ("name", "dkim_selector", "verified_at", "override_reason")
# One advisory lock for every change of who holds a name: verifications are rare (a person
# presses a button), and one lock covers a name and its parents alike.
_HOLD_LOCK = 0x6E6C646F6D  # "nldom"


def _names_above(name: str) -> list[str]:
    """The name and every parent domain of it with at least two labels."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def holder_of(name: str, *, besides: User) -> SendingDomain | None:
    """Another member's verified claim of the name or of a domain above it, if any."""
    return (
        SendingDomain.objects.filter(name__in=_names_above(name), verified_at__isnull=False)
        .exclude(member=besides)
        .select_related("member")
        .first()
    )


def _claims_below(name: str, *, besides: User) -> QuerySet[SendingDomain]:
    """Other members' claims of the name or of names under it."""
    return SendingDomain.objects.filter(Q(name=name) | Q(name__endswith=f".{name}")).exclude(
        member=besides
    )


def _lock_names() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_HOLD_LOCK])


@transaction.atomic
def domain_add(*, member: User, name: str) -> SendingDomain:
    """Register a claim of a domain and make its DKIM key; it sends nothing until verified.

    Refused for the co-op's own bounce domain, and for a name another member has verified
    or one under it; a name others merely claimed is free to claim.
    """
    _require_member(member)
    clean = _valid(validation.domain_name, name)
    if clean == settings.NEWSLETTER_BOUNCE_DOMAIN or clean.endswith(
        "." + settings.NEWSLETTER_BOUNCE_DOMAIN
    ):
        raise NewsletterError(_("%(name)s belongs to the co-op's relay.") % {"name": clean})
    _lock_names()
    holder = holder_of(clean, besides=member)
    if holder is not None:
        raise NewsletterError(_held_message(clean, holder))
    pair = dkim.generate_key()
    try:
        with transaction.atomic():
            domain = SendingDomain.objects.create(
                member=member,
                name=clean,
                dkim_selector=f"commune{timezone.now():%Y%m}",
                dkim_private_key=pair.private_pem,
                dkim_public_key=pair.public_b64,
            )
    except IntegrityError:
        raise NewsletterError(_("You have already added %(name)s.") % {"name": clean}) from None
    audit_record(
        actor=member,
        action="newsletters.domain_added",
        obj=domain,
        owner=member,
        after=snapshot(domain, DOMAIN_FIELDS),
    )
    return domain


def _held_message(name: str, holder: SendingDomain) -> str:
    return _(
        "%(name)s is verified by another member (as %(held)s). If the domain is yours, "
        "write to the co-op's admins."
    ) % {"name": name, "held": holder.name}


def _aligned(envelope_domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix list.

    Exact, or one a subdomain of the other; the co-op's return path is its own domain, so for
    members' domains SPF alignment fails and DKIM carries the alignment.
    """
    a, b = envelope_domain.lower(), from_domain.lower()
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _lookup(domain: SendingDomain) -> dict[str, Any]:
    """What DNS says about a claim; raises NewsletterError when DNS cannot be asked."""
    try:
        dkim_found = dns.txt_records(domain.dkim_name)
        spf_found = [r for r in dns.txt_records(domain.name) if r.lower().startswith("v=spf1")]
        dmarc_found = [
            r for r in dns.txt_records(f"_dmarc.{domain.name}") if r.upper().startswith("V=DMARC1")
        ]
    except dns.DnsError as exc:
        raise NewsletterError(
            _("The DNS lookup failed (%(error)s). Try again in a minute.") % {"error": exc}
        ) from None
    dkim_ok = any(dkim.public_key_matches(r, domain.dkim_public_key) for r in dkim_found)
    include = f"include:{settings.NEWSLETTER_SPF_INCLUDE}".lower()
    spf_ok = any(include in r.lower().split() for r in spf_found)
    spf_aligned = spf_ok and _aligned(settings.NEWSLETTER_BOUNCE_DOMAIN, domain.name)
    return {
        "dkim": {"ok": dkim_ok, "found": dkim_found[:5]},
        "spf": {"ok": spf_ok, "aligned": spf_aligned, "found": spf_found[:5]},
        "dmarc": {"ok": bool(dmarc_found), "found": dmarc_found[:5]},
    }


def _proven(result: dict[str, Any]) -> bool:
    return bool(result["dkim"]["ok"] or result["spf"]["aligned"])


def domain_check(*, domain: SendingDomain, actor: User) -> SendingDomain:
    """Look the domain's records up; verified when DKIM or SPF aligns with the From domain.

    The first claim proven holds the name. Another member's verified claim of it (or of a
    domain above it) is looked up again first: if its proof is gone, it loses the name and
    this claim may take it; if it stands, or an admin gave it the name, this claim stays
    unverified and its result says so.
    """
    result = _lookup(domain)
    proven = _proven(result)
    now = timezone.now()
    with transaction.atomic():
        _lock_names()
        locked = SendingDomain.objects.select_for_update().get(pk=domain.pk)
        before = snapshot(locked, DOMAIN_FIELDS)
        held = False
        if proven:
            holder = holder_of(locked.name, besides=locked.member)
            if holder is not None and _still_holds(holder, actor=actor):
                held = True
        result["held_by_another_member"] = held
        locked.checked_at = now
        locked.check_result = result
        was_verified = locked.verified
        if proven and not held:
            locked.verified_at = locked.verified_at or now
        elif not (locked.override_reason and was_verified):
            # The check is the truth: a domain whose key was removed from DNS stops sending;
            # only the admins' decision stands until they decide again.
            locked.verified_at = None
        locked.save(update_fields=["checked_at", "check_result", "verified_at"])
        audit_record(
            actor=actor,
            action="newsletters.domain_checked",
            obj=locked,
            owner=locked.member,
            before=before,
            after=snapshot(locked, DOMAIN_FIELDS),
        )
        if locked.verified and not was_verified:
            _tell_other_claimants(locked)
    return locked


def _still_holds(holder: SendingDomain, *, actor: User) -> bool:
    """Whether a verified claim still holds its name: by an admin's override, or by DNS.

    A DNS failure counts as holding: a name changes hands on proof, not on a timeout.
    """
    if holder.override_reason:
        return True
    try:
        if _proven(_lookup(holder)):
            return True
    except NewsletterError:
        return True
    _unverify(holder, actor=None, note=_("its DNS record is gone and another claim was proven"))
    return False


def _unverify(domain: SendingDomain, *, actor: User | None, note: str) -> None:
    before = snapshot(domain, DOMAIN_FIELDS)
    SendingDomain.objects.filter(pk=domain.pk).update(verified_at=None, override_reason="")
    domain.refresh_from_db()
    audit_record(
        actor=actor,
        action="newsletters.domain_unverified",
        obj=domain,
        owner=domain.member,
        before=before,
        after=snapshot(domain, DOMAIN_FIELDS),
        note=note,
    )
    _notify(domain)


def _tell_other_claimants(winner: SendingDomain) -> None:
    """Email the other members whose claims of the name (or names under it) cannot win now."""
    for claim in _claims_below(winner.name, besides=winner.member).filter(verified_at__isnull=True):
        _notify(claim)


def _notify(claim: SendingDomain) -> None:
    from newsletters import tasks

    # Told once per loss: a claim verified again and lost again is told again.
    SendingDomain.objects.filter(pk=claim.pk).update(lost_notice_at=None)
    enqueue_on_commit(tasks.send_domain_lost, claim.pk)


@transaction.atomic
def domain_override(*, domain: SendingDomain, actor: User, reason: str) -> SendingDomain:
    """An admin gives the name to this claim, whatever DNS says, with the reason audited.

    Other members' verified claims of the name or of a domain above it lose it (audited,
    their members emailed), and so do the pending claims below it, as when a proof wins.
    """
    if not (actor.is_staff and actor.has_perm("newsletters.change_sendingdomain")):
        raise NewsletterError(_("Only the co-op's admins can decide who holds a domain."))
    clean_reason = _valid(validation.header_text, reason, _("The reason"), max_length=300)
    if not clean_reason:
        raise NewsletterError(_("Give the reason for the decision."))
    _lock_names()
    locked = SendingDomain.objects.select_for_update().get(pk=domain.pk)
    for other in SendingDomain.objects.filter(
        name__in=_names_above(locked.name), verified_at__isnull=False
    ).exclude(member=locked.member):
        _unverify(other, actor=actor, note=clean_reason)
    before = snapshot(locked, DOMAIN_FIELDS)
    was_verified = locked.verified
    locked.verified_at = locked.verified_at or timezone.now()
    locked.override_reason = clean_reason
    locked.save(update_fields=["verified_at", "override_reason"])
    audit_record(
        actor=actor,
        action="newsletters.domain_overridden",
        obj=locked,
        owner=locked.member,
        before=before,
        after=snapshot(locked, DOMAIN_FIELDS),
        note=clean_reason,
    )
    if not was_verified:
        _tell_other_claimants(locked)
    return locked


@transaction.atomic
def domain_remove(*, domain: SendingDomain, actor: User) -> None:
    if MailingList.objects.filter(domain=domain).exists():
        raise NewsletterError(_("Lists still send from this domain; move or remove them first."))
    audit_record(
        actor=actor,
        action="newsletters.domain_removed",
        obj=domain,
        owner=domain.member,
        before=snapshot(domain, DOMAIN_FIELDS),
    )
    domain.delete()


def send_domain_lost_notice(*, domain_id: int) -> bool:
    """Email a member that another member holds a name they claimed; once per loss.

    The guarded UPDATE claims the email (a redelivered task finds it taken); a failed send
    releases it for the retry. Nothing is sent for a claim verified again meanwhile.
    """
    from panel.mail import send_templated_mail

    claimed = SendingDomain.objects.filter(
        pk=domain_id, lost_notice_at__isnull=True, verified_at__isnull=True
    ).update(lost_notice_at=timezone.now())
    if not claimed:
        return False
    claim = SendingDomain.objects.select_related("member").get(pk=domain_id)
    holder = holder_of(claim.name, besides=claim.member)
    try:
        send_templated_mail(
            "newsletters/email/domain_lost",
            to=claim.member.email,
            context={"user": claim.member, "domain": claim, "holder": holder},
        )
    except Exception:
        SendingDomain.objects.filter(pk=domain_id).update(lost_notice_at=None)
        raise
    return True
