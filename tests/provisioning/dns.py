"""A DNS server for hosting tests: tests/newsletters/dnsserver.py's, with A, AAAA and CNAME.

That server serves TXT only; domain proofs also look at where a name points. Records of the
three kinds are answered here, everything else (TXT, NXDOMAIN, failures) by the server
itself, so the resolver still crosses a real wire on loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from pytest_django.fixtures import Settings

from tests.newsletters.dnsserver import ZoneServer

POINTING = {"A", "AAAA", "CNAME"}


class HostingZone(ZoneServer):
    """ZoneServer plus A, AAAA and CNAME records (a CNAME is followed within the zone)."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[tuple[dns.name.Name, str], list[str]] = {}
        self._records_lock = threading.Lock()

    def set_record(self, name: str, kind: str, *values: str) -> None:
        assert kind in POINTING
        with self._records_lock:
            self._records[(dns.name.from_text(name), kind)] = list(values)

    def answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if len(query.question) != 1:
            return super().answer(wire, tcp=tcp)
        question = query.question[0]
        kind = dns.rdatatype.to_text(question.rdtype)
        with self._records_lock:
            names = {name for name, _kind in self._records}
            records = dict(self._records)
        if kind not in POINTING or question.name not in names:
            return super().answer(wire, tcp=tcp)
        self.queries.append((question.name.to_text(omit_final_dot=True).lower(), kind))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        owner = question.name
        for _hop in range(8):  # a CNAME, then what its target has
            cname = records.get((owner, "CNAME"))
            if cname and kind != "CNAME":
                response.answer.append(
                    dns.rrset.from_text(owner, 60, dns.rdataclass.IN, "CNAME", *cname)
                )
                owner = dns.name.from_text(cname[0])
                continue
            values = records.get((owner, kind))
            if values:
                response.answer.append(
                    dns.rrset.from_text(owner, 60, dns.rdataclass.IN, kind, *values)
                )
            break
        return response.to_wire()


@pytest.fixture
def hosting_dns(settings: Settings) -> Iterator[HostingZone]:
    """A running HostingZone, with HOSTING_DNS_SERVERS pointing at it for the test."""
    server = HostingZone()
    server.start()
    settings.HOSTING_DNS_SERVERS = [f"127.0.0.1:{server.port}"]
    settings.HOSTING_DNS_TIMEOUT = 2
    try:
        yield server
    finally:
        server.stop()
