"""Sending domains: DKIM keys, the DNS check, verification."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
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

# Sending domains -------------------------------------------------------------------------

DOMAIN_FIELDS = ("name", "dkim_selector", "verified_at")


@transaction.atomic
def domain_add(*, member: User, name: str) -> SendingDomain:
    """Register a domain and make its DKIM key; it sends nothing until it is verified."""
    _require_member(member)
    clean = _valid(validation.domain_name, name)
    if clean == settings.NEWSLETTER_BOUNCE_DOMAIN or clean.endswith(
        "." + settings.NEWSLETTER_BOUNCE_DOMAIN
    ):
        raise NewsletterError(_("%(name)s belongs to the co-op's relay.") % {"name": clean})
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
        raise NewsletterError(_("%(name)s is already registered.") % {"name": clean}) from None
    audit_record(
        actor=member,
        action="newsletters.domain_added",
        obj=domain,
        owner=member,
        after=snapshot(domain, DOMAIN_FIELDS),
    )
    return domain


def _aligned(envelope_domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix list.

    Exact, or one a subdomain of the other; the co-op's return path is its own domain, so for
    members' domains SPF alignment fails and DKIM carries the alignment.
    """
    a, b = envelope_domain.lower(), from_domain.lower()
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def domain_check(*, domain: SendingDomain, actor: User) -> SendingDomain:
    """Look the domain's records up; verified when DKIM or SPF aligns with the From domain."""
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
    verified = dkim_ok or spf_aligned
    now = timezone.now()
    result = {
        "dkim": {"ok": dkim_ok, "found": dkim_found[:5]},
        "spf": {"ok": spf_ok, "aligned": spf_aligned, "found": spf_found[:5]},
        "dmarc": {"ok": bool(dmarc_found), "found": dmarc_found[:5]},
    }
    with transaction.atomic():
        locked = SendingDomain.objects.select_for_update().get(pk=domain.pk)
        before = snapshot(locked, DOMAIN_FIELDS)
        locked.checked_at = now
        locked.check_result = result
        # The check is the truth: a domain whose key was removed from DNS stops sending.
        locked.verified_at = (locked.verified_at or now) if verified else None
        locked.save(update_fields=["checked_at", "check_result", "verified_at"])
        audit_record(
            actor=actor,
            action="newsletters.domain_checked",
            obj=locked,
            owner=locked.member,
            before=before,
            after=snapshot(locked, DOMAIN_FIELDS),
        )
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
