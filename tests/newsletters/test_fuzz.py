"""Hypothesis over the newsletters' entry points from outside: the inbound SMTP endpoint, the
dedup relay, the report parser behind them, and the public pages (signup form, confirmation
and unsubscribe links). The app has no JSON endpoint.

Whatever arrives: the SMTP endpoints answer 250 (taken; kept and dropped if unreadable) or a
permanent 5xx, never a 4xx that would have the mail node offer the same bytes again for days,
never with a traceback in the log, and an accepted message is kept whole with its outcome
(one transaction) while a refused one leaves nothing. The pages answer 200 or 4xx, never a
500; a refused form names the field, and saves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.core.cache import cache
from django.core.cache.backends.base import CacheKeyWarning
from django.urls import NoReverseMatch, reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletters import inbound, services, tokens
from newsletters.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryState,
    InboundReport,
    MailingList,
    SendingDomain,
)
from newsletters.relay import DedupRelay
from newsletters.reports import DETAIL_MAX, Report, ReportError, parse_report
from tests.conftest import SmtpSink, free_port
from tests.newsletters import samples
from tests.newsletters.fixtures import add_confirmed

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# Bytes --------------------------------------------------------------------------------------

CONTROL = st.sampled_from([b"\x00", b"\x01", b"\x07", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\r"])
UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=60).map(
    lambda t: t.encode("utf-8")
)
CONTENT_TYPES = [
    b"multipart/report; report-type=delivery-status; boundary=b",
    b"multipart/report; report-type=feedback-report; boundary=b",
    b"multipart/report; boundary=",
    b"multipart/mixed; boundary=b",
    b"multipart/mixed; boundary=\"b\"; boundary*=utf-8''%C3%A4",
    b"message/rfc822",
    b"message/global",
    b"message/delivery-status",
    b"message/global-delivery-status",
    b"message/feedback-report",
    b"message/rfc822-headers",
    b"message/global-headers",
    b"text/rfc822-headers",
    b"text/plain; charset=no-such-charset",
    b"application/octet-stream",
    b"multipart/digest; boundary=b",
    b"garbage",
]
ENCODINGS = [b"base64", b"quoted-printable", b"8bit", b"x-unknown", b"bAsE64"]
FIELD_NAMES = [
    b"From",
    b"To",
    b"Message-ID",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Final-Recipient",
    b"Original-Recipient",
    b"Action",
    b"Status",
    b"Diagnostic-Code",
    b"Feedback-Type",
    b"Original-Rcpt-To",
    b"Original-Mail-From",
    b"Return-Path",
    b"X-Failed-Recipients",
    b"Feedback-ID",
    b"Received",
    b"X-HmXmrOriginalRecipient",
    b"X-Postfix-Sender",
]
VALUES = st.one_of(
    UNICODE,
    st.binary(max_size=80),
    st.sampled_from(
        [
            b"rfc822; someone@example.net",
            b"utf-8; \xc3\xbc@example.net",
            b"failed",
            b"delayed",
            b"4.4.7",
            b"5.1.1 (x)",
            b"9.9.9",
            b"abuse",
            b"<d1.aaaaaaaaaa@bounces.localhost>",
            b"<bounces+d1.aaaaaaaaaa@bounces.localhost>",
            b"=?utf-8?b?w7w=?=",
            b"x" * 3000,
        ]
    ),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(ENCODINGS),
)


@st.composite
def header_block(draw: Any) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(st.sampled_from(FIELD_NAMES), st.binary(min_size=1, max_size=12)))
        value = draw(VALUES)
        fold = draw(st.booleans())
        lines.append(name + b":" + (b"\n\t" if fold else b" ") + value)
    return b"\n".join(lines) + b"\n"


@st.composite
def entity(draw: Any, depth: int = 0) -> bytes:
    head = draw(header_block())
    if draw(st.booleans()):
        head += b"Content-Type: " + draw(st.sampled_from(CONTENT_TYPES)) + b"\n"
    if depth < 3 and draw(st.booleans()):
        parts = draw(st.lists(entity(depth + 1), max_size=4))
        closing = draw(st.sampled_from([b"--b--\n", b"", b"--b\n", b"--B--\n"]))
        body = b"".join(b"--b\n" + p + b"\n" for p in parts) + closing
    else:
        body = draw(
            st.one_of(
                st.binary(max_size=300),
                UNICODE,
                st.just(b"A" * draw(st.integers(0, 4000))),
                st.lists(CONTROL, max_size=20).map(b"".join),
            )
        )
    separator = draw(st.sampled_from([b"\n", b"", b"\n\n", b"\r\n"]))
    return head + separator + body


@st.composite
def mutated_sample(draw: Any) -> bytes:
    raw = samples.load(
        draw(st.sampled_from(samples.NAMES)),
        rcpt=draw(st.sampled_from(["x@example.net", "xxxxx@example.net", "*@x"])),
        message_id=draw(st.sampled_from(["d1.aaaaaaaaaa@bounces.localhost", "", "<<>>"])),
        verp="bounces+d1.aaaaaaaaaa@bounces.localhost",
    )
    at = draw(st.integers(0, len(raw)))
    how = draw(st.sampled_from(["cut", "insert", "replace", "drop_blank_lines", "crlf"]))
    if how == "cut":
        return raw[:at]
    if how == "insert":
        return raw[:at] + draw(st.one_of(st.binary(max_size=50), CONTROL, UNICODE)) + raw[at:]
    if how == "replace":
        return raw[:at] + draw(st.binary(max_size=20)) + raw[at + 20 :]
    if how == "drop_blank_lines":
        return raw.replace(b"\n\n", b"\n")
    return raw.replace(b"\n", b"\r")


MESSAGES = st.one_of(
    entity(),
    mutated_sample(),
    st.binary(max_size=500),
    UNICODE,
    st.just(b""),
    st.builds(lambda n: b"X-Long: " + b"y" * n + b"\n\nbody\n", st.integers(900, 5000)),
)


# The parser ----------------------------------------------------------------------------------


@fuzz(400)
@given(MESSAGES)
def test_the_parser_reads_anything_as_a_report_or_refuses_it_as_no_email(raw: bytes) -> None:
    try:
        report = parse_report(raw)
    except ReportError as exc:
        refused: ReportError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.permanent
        return
    assert isinstance(report, Report)
    assert report.type in ("dsn", "arf", "unknown")
    for finding in report.findings:
        assert finding.kind in ("hard", "soft", "complaint")
        assert len(finding.detail) <= DETAIL_MAX
        assert "\n" not in finding.detail + finding.address + finding.message_id + finding.verp
        assert "\r" not in finding.detail + finding.address + finding.message_id + finding.verp


# The inbound endpoint, over a real socket ----------------------------------------------------


class RawSmtp:
    """An SMTP client that sends whatever bytes it is given (smtplib encodes and checks)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        self.reply()

    def reply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, content: bytes) -> tuple[int, bytes]:
        code, text = self.command(b"DATA")
        if code != 354:
            return code, text
        if content and not content.endswith(b"\r\n"):
            content += b"\r\n"
        # Dot-stuffing (RFC 5321 4.5.2): a line beginning with a dot gets another; lines
        # begin after CRLF only.
        stuffed = re.sub(rb"(?:^|(?<=\r\n))\.", b"..", content)
        self.sock.sendall(stuffed + b".\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.command(b"QUIT")
        self.sock.close()


@pytest.fixture
def endpoint(transactional_db: None) -> Iterator[int]:
    port = free_port()
    controller = inbound.server("127.0.0.1", port, ["127.0.0.0/8"])
    controller.start()
    yield port
    controller.stop()


@pytest.fixture
def known(transactional_db: None, alice, statutes, carol) -> dict[str, str]:
    """Real addresses of the bounce domain: a delivery's VERP, an unsubscribe, the FBL."""
    domain = services.domain_add(member=alice, name="alice-news.example")
    SendingDomain.objects.filter(pk=domain.pk).update(verified_at="2026-01-01T00:00Z")
    mlist = MailingList.objects.create(
        member=alice, name="L", slug="l", domain=domain, from_name="L", from_local="l"
    )
    reader = add_confirmed(mlist, 1)[0]
    campaign = Campaign.objects.create(
        list=mlist, subject="s", text_body="t", state=CampaignState.SENDING, submitted=100
    )
    delivery = Delivery.objects.create(
        campaign=campaign, subscriber=reader, state=DeliveryState.SUBMITTED
    )
    return {
        "verp": tokens.return_path(delivery.pk),
        "unsubscribe": tokens.unsubscribe_mailto(tokens.unsubscribe_token(reader.pk, delivery.pk)),
        "fbl": "fbl@bounces.localhost",
    }


RECIPIENTS = st.one_of(
    st.sampled_from(["verp", "unsubscribe", "fbl"]),
    st.sampled_from(
        [
            "bounces@bounces.localhost",
            "bounces+\x00@bounces.localhost",
            "bounces+ä@bounces.localhost",
            "unsubscribe+1.2.zzzzzzzzzzzzzzzz@bounces.localhost",
            "postmaster@bounces.localhost",
            "someone@elsewhere.example",
            "bounces+" + "d" * 2000 + "@bounces.localhost",
            "",
        ]
    ),
    st.text(max_size=40).map(lambda t: t.replace("\r", "").replace("\n", "")),
)


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@fuzz(150)
@given(raw=MESSAGES, rcpt=RECIPIENTS)
def test_the_endpoint_takes_or_refuses_for_good_and_never_half_saves(
    endpoint: int, known: dict[str, str], caplog: pytest.LogCaptureFixture, raw: bytes, rcpt: str
) -> None:
    address = known.get(rcpt, rcpt)
    before = InboundReport.objects.count()
    client = RawSmtp(endpoint)
    try:
        assert client.command(b"EHLO fuzz.example")[0] == 250
        assert client.command(b"MAIL FROM:<>")[0] == 250
        code, text = client.command(b"RCPT TO:<" + address.encode("utf-8", "replace") + b">")
        assert code == 250 or 500 <= code < 600, text
        if code != 250:
            assert InboundReport.objects.count() == before
            return
        code, text = client.data(raw)
    finally:
        client.close()
    assert code == 250 or 500 <= code < 600, text
    sent = raw if not raw or raw.endswith(b"\r\n") else raw + b"\r\n"
    digest = hashlib.sha256(address.lower().encode() + b"\0" + sent).hexdigest()
    kept = InboundReport.objects.filter(sha256=digest).first()
    if code == 250:
        assert kept is not None
        assert kept.outcome, "an accepted message is kept with what it did"
        assert not kept.outcome.startswith("error")
    else:
        assert InboundReport.objects.count() == before
    _no_tracebacks(caplog)


# The relay ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DedupRelay, SmtpSink]]:
    sink = SmtpSink()
    sink.start()
    port = free_port()
    relay = DedupRelay(
        host="127.0.0.1",
        port=port,
        store=tmp_path_factory.mktemp("relay") / "seen.sqlite3",
        next_hop=f"smtp://127.0.0.1:{sink.port}",
    )
    relay.start()
    yield relay, sink
    relay.stop()
    sink.stop()


@fuzz(80)
@given(raw=MESSAGES, rcpt=st.sampled_from(["a@example.net", "b@example.org"]))
def test_the_relay_forwards_or_refuses_for_good(
    relay: tuple[DedupRelay, SmtpSink], caplog: pytest.LogCaptureFixture, raw: bytes, rcpt: str
) -> None:
    """Its clients are the panel's hosts only; still, no content makes it defer or fail."""
    server, _sink = relay
    deferred = server.deferred
    client = RawSmtp(server.port)
    try:
        assert client.command(b"EHLO fuzz.example")[0] == 250
        assert client.command(b"MAIL FROM:<news@coop.example>")[0] == 250
        assert client.command(b"RCPT TO:<" + rcpt.encode() + b">")[0] == 250
        code, text = client.data(raw)
    finally:
        client.close()
    assert code == 250 or 500 <= code < 600, text
    assert server.deferred == deferred
    _no_tracebacks(caplog)


# The public pages ------------------------------------------------------------------------------

TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=120),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=250, max_size=400),
    st.lists(st.sampled_from(["\x00", "\t", "\r", "\n", "\u2028", "\x1b", "=", "@"])).map("".join),
    st.sampled_from(["a@example.net", " A@Example.NET ", "=1+2@example.net", "x" * 300]),
)


def _counts() -> dict[str, int]:
    return {model._meta.label: model._default_manager.count() for model in apps.get_models()}


@pytest.fixture
def open_list(alice_list: MailingList, mail_rate: Any) -> MailingList:
    return alice_list


@fuzz(120)
@given(
    email=st.one_of(TEXT, st.none()),
    name=st.one_of(TEXT, st.none()),
    website=st.one_of(st.just(""), TEXT, st.none()),
)
def test_the_signup_form_names_the_field_and_saves_nothing_it_refuses(
    client: Any, open_list: MailingList, email: Any, name: Any, website: Any
) -> None:
    cache.clear()  # the signup rate limit is not what is tested here
    data = {
        k: v for k, v in (("email", email), ("name", name), ("website", website)) if v is not None
    }
    before = _counts()
    with warnings.catch_warnings():
        # Django warns of a cache key memcached would refuse; the key must not depend on
        # what a stranger typed.
        warnings.simplefilter("error", CacheKeyWarning)
        response = client.post(reverse("newsletters:signup", args=[open_list.slug]), data)
    assert response.status_code in (200, 422), response.status_code
    if response.status_code == 422:
        errors = response.context["form"].errors
        assert errors
        assert set(errors) <= {"email", "name"}, errors
        for field in errors:
            assert f'id="id_{field}_errors"' in response.content.decode()
        assert _counts() == before
    elif website:
        assert _counts() == before  # the honeypot: told it worked, nothing stored


@fuzz(80)
@given(
    token=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="/"), min_size=1, max_size=300
    )
)
def test_confirm_and_unsubscribe_links_with_any_token_are_never_a_500(
    client: Any, open_list: MailingList, token: str
) -> None:
    before = _counts()
    for name in ("newsletters:confirm", "newsletters:unsubscribe"):
        try:
            url = reverse(name, args=[token])
        except NoReverseMatch:
            continue  # a token no URL can carry is one nobody can send
        for method in (client.get, client.post):
            response = method(url, {"List-Unsubscribe": "One-Click"})
            assert response.status_code in (200, 400, 404), (name, response.status_code)
    assert _counts() == before
