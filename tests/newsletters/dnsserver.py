"""A small authoritative DNS server on loopback, so that lookups in tests cross a real wire.

Built on dnspython's wire format (from_wire, make_response, to_wire), answering UDP and TCP
on one free port, so that the resolver's real behaviour (retries, TC and the TCP fallback,
rcodes) is what the tests see. Every name is in the server's "zone"; only TXT is served.
"""

from __future__ import annotations

import contextlib
import socketserver
import struct
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings

# Without EDNS a UDP answer may be at most 512 bytes (RFC 1035 4.2.1); beyond that the server
# sets TC and the client asks again over TCP.
_UDP_LIMIT = 512
_TTL = 60
_CHUNK = 255  # longest character-string in a TXT record


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name, origin=dns.name.root)


class ZoneServer:
    """TXT records, forced failures and a log of queries, served on 127.0.0.1:`port`.

    Unknown names get NXDOMAIN; a known name asked for another type gets NOERROR with an
    empty answer, and so does an ancestor of a known name (an "empty non-terminal", such as
    _domainkey.example.org when sel._domainkey.example.org exists).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._txt: dict[dns.name.Name, list[list[bytes]]] = {}
        self._failures: dict[dns.name.Name, dns.rcode.Rcode] = {}
        #: (name without final dot, lowercased; type as text), every query, in order.
        self.queries: list[tuple[str, str]] = []
        #: The same, for the queries that came over TCP only.
        self.tcp_queries: list[tuple[str, str]] = []
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    # --- zone contents ---------------------------------------------------------------------

    def set_txt(self, name: str, *values: str | bytes) -> None:
        """Publish TXT records at `name` (one per value), replacing what was there.

        A value longer than 255 bytes becomes several character-strings, as zone files and
        DNS providers store it.
        """
        records = []
        for value in values:
            data = value.encode("utf-8") if isinstance(value, str) else value
            records.append([data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""])
        with self._lock:
            self._txt[_absolute(name)] = records

    def remove(self, name: str) -> None:
        """Forget `name`: its records and any forced failure; it answers NXDOMAIN again."""
        key = _absolute(name)
        with self._lock:
            self._txt.pop(key, None)
            self._failures.pop(key, None)

    def fail(self, name: str, rcode: dns.rcode.Rcode | str = dns.rcode.SERVFAIL) -> None:
        """Answer every query for `name` with `rcode` (e.g. SERVFAIL, REFUSED)."""
        code = dns.rcode.from_text(rcode) if isinstance(rcode, str) else rcode
        with self._lock:
            self._failures[_absolute(name)] = code

    # --- serving ---------------------------------------------------------------------------

    def answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The response to one query in wire format; None (no answer) for undecodable input."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        entry = (
            question.name.to_text(omit_final_dot=True).lower(),
            dns.rdatatype.to_text(question.rdtype),
        )
        with self._lock:
            self.queries.append(entry)
            if tcp:
                self.tcp_queries.append(entry)
            failure = self._failures.get(question.name)
            records = self._txt.get(question.name)
            has_descendants = any(
                name.is_subdomain(question.name) and name != question.name for name in self._txt
            )
        if failure is not None:
            response.set_rcode(failure)
        elif records is not None:
            if question.rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY):
                rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
                for strings in records:
                    rrset.add(
                        dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings),
                        _TTL,
                    )
                response.answer.append(rrset)
        elif not has_descendants:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if tcp:
            return response.to_wire()
        limit = max(_UDP_LIMIT, query.payload) if query.edns >= 0 else _UDP_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Keep the header and question only, with TC set: the client must not use a
            # partial answer, and retries over TCP (RFC 7766 5).
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def start(self) -> None:
        """Listen on UDP and TCP on the same free port of 127.0.0.1, in daemon threads."""
        zone = self

        class UdpHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = zone.answer(data, tcp=False)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TcpHandler(socketserver.StreamRequestHandler):
            timeout = 5

            def handle(self) -> None:
                # OSError: the client went away or idled past `timeout`; nothing to answer.
                with contextlib.suppress(OSError):
                    self._serve()

            def _serve(self) -> None:
                # A connection may carry several queries (RFC 7766 6.2.1), each length-prefixed.
                while True:
                    prefix = self.rfile.read(2)
                    if len(prefix) < 2:
                        return
                    (length,) = struct.unpack("!H", prefix)
                    data = self.rfile.read(length)
                    if len(data) < length:
                        return
                    reply = zone.answer(data, tcp=True)
                    if reply is None:
                        return
                    self.wfile.write(struct.pack("!H", len(reply)) + reply)

        for _attempt in range(50):
            udp = _UdpServer(("127.0.0.1", 0), UdpHandler)
            port = udp.server_address[1]
            try:
                tcp = _TcpServer(("127.0.0.1", port), TcpHandler)
            except OSError:
                udp.server_close()  # the TCP side of that port is taken; try another
                continue
            break
        else:
            raise RuntimeError("no free port with both UDP and TCP on 127.0.0.1")
        self._udp, self._tcp, self.port = udp, tcp, port
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-{port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop serving and free the port."""
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> ZoneServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    block_on_close = False


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    # A port just freed by a previous test may sit in TIME_WAIT.
    allow_reuse_address = True


@pytest.fixture(name="dns_zone")
def dns_zone_fixture(settings: Settings) -> Iterator[ZoneServer]:
    """A running ZoneServer, with NEWSLETTER_DNS_SERVERS pointing at it for the test.

    Registered as `dns_zone`. Import `dns_zone_fixture` (noqa: F401) into a test module to
    use it: importing the name `dns_zone` itself works too, but ruff then reports every test
    argument called dns_zone as a redefinition (F811).
    """
    server = ZoneServer()
    server.start()
    settings.NEWSLETTER_DNS_SERVERS = [f"127.0.0.1:{server.port}"]
    try:
        yield server
    finally:
        server.stop()


dns_zone = dns_zone_fixture
