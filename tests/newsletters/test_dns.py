"""TXT lookups through a real DNS server on loopback (tests/newsletters/dnsserver.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdtypes.ANY.TXT
import pytest
from django.core.exceptions import ImproperlyConfigured

from newsletters import dkim as panel_dkim
from newsletters.dns import DnsError, _nameserver, txt_records
from tests.newsletters.dnsserver import ZoneServer, dns_zone_fixture  # noqa: F401

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings


def _txt_strings(response: dns.message.Message) -> list[tuple[bytes, ...]]:
    return [
        tuple(rdata.strings)
        for rrset in response.answer
        for rdata in rrset
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    ]


def test_long_record_is_split_on_the_wire_and_joined_back(dns_zone: ZoneServer) -> None:
    value = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(40)) + " -all"
    assert len(value) > 510
    dns_zone.set_txt("example.org", value)

    # On the wire: 255-byte character-strings, as real zones serve them.
    query = dns.message.make_query("example.org.", "TXT")
    response = dns.query.tcp(query, "127.0.0.1", port=dns_zone.port, timeout=2)
    (strings,) = _txt_strings(response)
    assert [len(s) for s in strings] == [255, 255, len(value) - 510]

    assert txt_records("example.org") == [value]


def test_dkim_record_round_trip(dns_zone: ZoneServer) -> None:
    key = panel_dkim.generate_key()
    dns_zone.set_txt("sel._domainkey.example.org", panel_dkim.dns_record_value(key.public_b64))

    (record,) = txt_records("sel._domainkey.example.org")

    assert panel_dkim.public_key_matches(record, key.public_b64)
    # ~410 bytes: one UDP answer, no TCP retry.
    assert dns_zone.queries == [("sel._domainkey.example.org", "TXT")]
    assert dns_zone.tcp_queries == []


def test_several_records_give_several_strings(dns_zone: ZoneServer) -> None:
    dns_zone.set_txt("example.org", "v=spf1 -all", "google-site-verification=abc", "")
    assert sorted(txt_records("example.org")) == ["", "google-site-verification=abc", "v=spf1 -all"]


def test_truncated_udp_answer_is_retried_over_tcp(dns_zone: ZoneServer) -> None:
    values = [f"record {i} " + "x" * 200 for i in range(4)]
    dns_zone.set_txt("big.example.org", *values)

    # Without EDNS the UDP answer is capped at 512 bytes: TC, and no partial answer.
    query = dns.message.make_query("big.example.org.", "TXT")
    response = dns.query.udp(query, "127.0.0.1", port=dns_zone.port, timeout=2)
    assert response.flags & dns.flags.TC
    assert response.answer == []
    # With EDNS and a large buffer, it fits.
    query = dns.message.make_query("big.example.org.", "TXT", use_edns=0, payload=4096)
    response = dns.query.udp(query, "127.0.0.1", port=dns_zone.port, timeout=2)
    assert not response.flags & dns.flags.TC
    assert len(_txt_strings(response)) == 4

    dns_zone.queries.clear()
    dns_zone.tcp_queries.clear()
    assert sorted(txt_records("big.example.org")) == values
    assert dns_zone.queries == [("big.example.org", "TXT")] * 2
    assert dns_zone.tcp_queries == [("big.example.org", "TXT")]


def test_nxdomain_is_no_records(dns_zone: ZoneServer) -> None:
    assert txt_records("nothing.example.org") == []
    # Absolute: no search domain was tried after the NXDOMAIN.
    assert dns_zone.queries == [("nothing.example.org", "TXT")]


def test_removed_name_is_gone(dns_zone: ZoneServer) -> None:
    dns_zone.set_txt("example.org", "v=spf1 -all")
    assert txt_records("example.org") == ["v=spf1 -all"]
    dns_zone.remove("example.org")
    assert txt_records("example.org") == []


def test_nodata_is_no_records(dns_zone: ZoneServer) -> None:
    dns_zone.set_txt("sel._domainkey.example.org", "v=DKIM1; p=")
    # An empty non-terminal: the name exists, without TXT.
    assert txt_records("_domainkey.example.org") == []
    # Another type at a known name is NOERROR with an empty answer.
    query = dns.message.make_query("sel._domainkey.example.org.", "A")
    response = dns.query.udp(query, "127.0.0.1", port=dns_zone.port, timeout=2)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


def test_trailing_dot_and_case_are_accepted(dns_zone: ZoneServer) -> None:
    dns_zone.set_txt("example.org", "hello")
    assert txt_records("Example.ORG.") == ["hello"]


def test_bytes_that_are_not_utf8_are_replaced(dns_zone: ZoneServer) -> None:
    dns_zone.set_txt("example.org", b"caf\xe9 ok", "caf\u00e9".encode())
    assert sorted(txt_records("example.org")) == ["caf\u00e9", "caf\ufffd ok"]


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_server_failure_is_temporary(dns_zone: ZoneServer, rcode: str) -> None:
    dns_zone.set_txt("example.org", "v=spf1 -all")
    dns_zone.fail("example.org", rcode)
    with pytest.raises(DnsError) as caught:
        txt_records("example.org")
    assert caught.value.permanent is False


INVALID_NAMES = {
    "empty": "",
    "root only": ".",
    "empty label": "a..example.org",
    "leading dot": ".example.org",
    "label of 64": "a" * 64 + ".example.org",
    "254 characters": ".".join(["a" * 63] * 3 + ["a" * 62]),
    "space": "exa mple.org",
    "trailing newline": "example.org\n",
    "star": "*.example.org",
    "slash": "example.org/x",
    "at sign": "news@example.org",
    "nul": "example\x00.org",
    "non-ascii": "b\u00fccher.example",
    "quote": 'example.org"',
    "two trailing dots": "example.org..",
}


@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
def test_invalid_names_are_refused_before_any_query(dns_zone: ZoneServer, name: str) -> None:
    with pytest.raises(DnsError) as caught:
        txt_records(name)
    assert caught.value.permanent is True
    assert dns_zone.queries == []


def test_longest_valid_names_are_queried(dns_zone: ZoneServer) -> None:
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(longest) == 253
    assert txt_records(longest) == []
    assert txt_records(longest + ".") == []
    assert txt_records("_dmarc.-odd_label-.example") == []
    assert len(dns_zone.queries) == 3


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port that never answers (and, being bound, sends no ICMP unreachable)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_timeout_is_temporary(settings: Settings, silent_udp_port: int) -> None:
    settings.NEWSLETTER_DNS_SERVERS = [f"127.0.0.1:{silent_udp_port}"]
    settings.NEWSLETTER_DNS_TIMEOUT = 1
    start = time.monotonic()
    with pytest.raises(DnsError) as caught:
        txt_records("example.org")
    assert caught.value.permanent is False
    assert time.monotonic() - start < 3


def test_servers_on_different_ports_are_all_used(settings: Settings) -> None:
    with ZoneServer() as broken, ZoneServer() as working:
        broken.fail("example.org", "SERVFAIL")
        working.set_txt("example.org", "v=spf1 -all")
        settings.NEWSLETTER_DNS_SERVERS = [
            f"127.0.0.1:{broken.port}",
            f"127.0.0.1:{working.port}",
        ]
        assert broken.port != working.port
        assert txt_records("example.org") == ["v=spf1 -all"]
        assert working.queries == [("example.org", "TXT")]


@pytest.mark.parametrize(
    ("entry", "address", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        (" 192.0.2.1:53 ", "192.0.2.1", 53),
        ("::1", "::1", 53),
        ("[::1]", "::1", 53),
        ("[2001:db8::1]:5353", "2001:db8::1", 5353),
    ],
)
def test_server_setting_entries(entry: str, address: str, port: int) -> None:
    server = _nameserver(entry)
    assert (server.address, server.port) == (address, port)


@pytest.mark.parametrize(
    "entry", ["dns.example.org", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:99999", "[::1]x", ""]
)
def test_bad_server_setting_entries(entry: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        _nameserver(entry)
