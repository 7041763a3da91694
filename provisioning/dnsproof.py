"""Whether a domain's DNS proves that a member controls it, through dnspython.

A name proves itself by pointing at the site's node (A or AAAA to the node's public address,
or a CNAME to the co-op's domain or a name under it), or by a TXT record at
``_commune-panel.NAME`` that carries the token the panel showed the member. One function,
``look_up``, that never raises: what it found is in its note, for the member to read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TXT_PREFIX = "_commune-panel"


@dataclass(frozen=True)
class Finding:
    """``proof`` is "dns", "txt" or "" (none); ``note`` says what DNS answered."""

    proof: str
    note: str


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """One HOSTING_DNS_SERVERS entry: "address" or "address:port" ("[v6]:port")."""
    text, port = entry.strip(), 53
    if text.startswith("["):
        text, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 53
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        port = int(digits) if digits.isdigit() else 0
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ImproperlyConfigured(f"HOSTING_DNS_SERVERS: bad entry {entry!r}") from None
    if not 0 < port < 65536:
        raise ImproperlyConfigured(f"HOSTING_DNS_SERVERS: bad port in {entry!r}")
    return dns.nameserver.Do53Nameserver(str(address), port)


def _resolver() -> dns.resolver.Resolver:
    servers = [_nameserver(entry) for entry in settings.HOSTING_DNS_SERVERS]
    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = servers
    # Absolute names only: a search domain would turn a failed lookup into another name's.
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.timeout = resolver.lifetime = float(settings.HOSTING_DNS_TIMEOUT)
    return resolver


def _answers(
    resolver: dns.resolver.Resolver, name: str, rdtype: str, trouble: list[str]
) -> list[str]:
    """The records of one type at ``name`` as text; [] for none, noted in ``trouble`` when
    the DNS could not say (a timeout, a server failure)."""
    try:
        answer = resolver.resolve(f"{name}.", rdtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        trouble.append(f"{rdtype}: {type(exc).__name__}")
        return []
    if answer.rrset is None:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset]
    return [r.to_text().rstrip(".").lower() for r in answer.rrset]


def look_up(name: str, *, token: str, addresses: set[str], cname_target: str) -> Finding:
    """What the DNS says about ``name``: proof by TXT token, by pointing, or none.

    A and AAAA follow a CNAME chain (the resolver does), so a CNAME to any name that resolves
    to the node proves as well as one to the co-op's domain.
    """
    try:
        resolver = _resolver()
    except dns.resolver.NoResolverConfiguration as exc:
        return Finding("", f"no DNS resolver: {exc}")
    trouble: list[str] = []
    txt = _answers(resolver, f"{TXT_PREFIX}.{name}", "TXT", trouble)
    cnames = _answers(resolver, name, "CNAME", trouble)
    found = {
        "A": _answers(resolver, name, "A", trouble),
        "AAAA": _answers(resolver, name, "AAAA", trouble),
        "CNAME": cnames,
        "TXT": txt,
    }
    note = "; ".join(f"{kind}: {', '.join(v)[:120] or '-'}" for kind, v in found.items())
    if trouble:
        note += f" (no answer for {', '.join(trouble)})"
    if any(value.strip() == token for value in txt):
        return Finding("txt", note)
    target = cname_target.lower().rstrip(".")
    if target and any(c == target or c.endswith(f".{target}") for c in cnames):
        return Finding("dns", note)
    pointed = {str(ipaddress.ip_address(a)) for a in (*found["A"], *found["AAAA"])}
    if {str(ipaddress.ip_address(a)) for a in addresses} & pointed:
        return Finding("dns", note)
    return Finding("", note)
