"""DNS lookups for newsletter domains (DKIM and SPF checks), through dnspython.

One function and one exception, so that callers never see dnspython's exception zoo and
tests can point the lookups at a server of their own (NEWSLETTER_DNS_SERVERS).
"""

from __future__ import annotations

import ipaddress
import re

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Names come from members' input: only what DKIM/SPF names can contain (underscore for
# _domainkey and friends), each label 1-63 characters, at most 253 without the final dot.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?", re.ASCII)
_MAX_NAME_LENGTH = 253


class DnsError(Exception):
    """A lookup that gave no usable answer.

    `permanent` tells callers whether asking again can help: True for a name that can never
    resolve (invalid syntax), False for timeouts and server failures, which are worth retrying.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """One NEWSLETTER_DNS_SERVERS entry: "host", "host:port", "[v6]:port" or a bare v6 address.

    Do53Nameserver carries its own port, so servers on different ports can be mixed (the
    resolver-wide `port` could not).
    """
    text = entry.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ImproperlyConfigured(f"NEWSLETTER_DNS_SERVERS: bad entry {entry!r}")
            port = _port(entry, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(entry, port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ImproperlyConfigured(
            f"NEWSLETTER_DNS_SERVERS: {entry!r} is not an IP address (with an optional port)"
        ) from None
    return dns.nameserver.Do53Nameserver(str(address), port)


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ImproperlyConfigured(f"NEWSLETTER_DNS_SERVERS: bad port in {entry!r}")
    return int(text)


def _resolver() -> dns.resolver.Resolver:
    """A resolver configured from the settings, built per lookup.

    Per lookup because tests (and a reloaded /etc/resolv.conf) change the configuration,
    and lookups are rare (domain checks), so the cost does not matter.
    """
    servers = [_nameserver(entry) for entry in settings.NEWSLETTER_DNS_SERVERS]
    try:
        resolver = dns.resolver.Resolver(configure=not servers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise DnsError(f"no DNS resolver configured: {exc}", permanent=False) from exc
    if servers:
        resolver.nameservers = servers
    # Names are absolute: a search domain would turn "example.org" into a query for
    # "example.org.corp.lan" when the first lookup fails.
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.timeout = float(settings.NEWSLETTER_DNS_TIMEOUT)
    resolver.lifetime = float(settings.NEWSLETTER_DNS_TIMEOUT)
    return resolver


def _absolute_name(name: str) -> dns.name.Name:
    """The name as an absolute DNS name, or DnsError(permanent=True) if it is not a valid one.

    Checked against an allowlist before dnspython sees it, so that member input never
    reaches the wire in a form we did not mean to send.
    """
    if not _NAME.fullmatch(name) or len(name.rstrip(".")) > _MAX_NAME_LENGTH:
        raise DnsError(f"not a valid DNS name: {name[:300]!r}", permanent=True)
    try:
        return dns.name.from_text(name, origin=dns.name.root)
    except dns.exception.DNSException as exc:
        raise DnsError(f"not a valid DNS name: {name!r} ({exc})", permanent=True) from exc


def txt_records(name: str) -> list[str]:
    """The TXT records at `name`, one string per record; [] if there are none.

    The character-strings of a record are joined without separator, as DKIM (RFC 6376 3.6.2.2)
    and SPF (RFC 7208 3.3) require for values longer than 255 bytes; bytes that are not UTF-8
    are replaced rather than fatal, so that one odd record does not hide the others.
    NXDOMAIN and NODATA are answers ("nothing published"), not errors.
    """
    qname = _absolute_name(name)
    resolver = _resolver()
    try:
        answer = resolver.resolve(qname, dns.rdatatype.TXT, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.Timeout as exc:
        raise DnsError(f"DNS lookup of {name} timed out", permanent=False) from exc
    except dns.resolver.NoNameservers as exc:
        raise DnsError(f"no DNS server answered for {name}: {exc}", permanent=False) from exc
    except (dns.exception.DNSException, OSError) as exc:
        # YXDOMAIN, malformed responses, unreachable networks: nothing says the name itself
        # is bad, so callers may retry.
        raise DnsError(f"DNS lookup of {name} failed: {exc}", permanent=False) from exc
    if answer.rrset is None:
        return []
    return [
        b"".join(rdata.strings).decode("utf-8", errors="replace")
        for rdata in answer.rrset
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    ]
