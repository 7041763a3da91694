"""The inbound endpoint over a real socket: large messages, the size limit Postfix shares,
what is kept of a message and for how long, and whatever strangers may send to it."""

from __future__ import annotations

import base64
import contextlib
import random
import re
import smtplib
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from django.conf import settings
from django.utils import timezone

from newsletters import inbound, tokens
from newsletters.models import (
    BounceEvent,
    CampaignState,
    ConsentEvent,
    Delivery,
    InboundReport,
    Subscriber,
    SubscriberStatus,
)
from panel.celery import app
from tests.conftest import free_port
from tests.newsletters import samples
from tests.newsletters.fixtures import inbound_endpoint, submitted_delivery

ROOT = Path(__file__).resolve().parents[2]
MB = 1_000_000


@pytest.fixture
def endpoint(transactional_db: None) -> Iterator[int]:
    with inbound_endpoint() as port:
        yield port


@pytest.fixture
def delivery(transactional_db: None, alice, statutes, carol) -> Delivery:
    return submitted_delivery(alice, state=CampaignState.SENDING, submitted=1000)


def send(port: int, raw: bytes, rcpt: str) -> tuple[int, str]:
    """One SMTP transaction; CRLF on the wire, as Postfix sends it."""
    wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        smtp.ehlo()
        code, text = smtp.mail("")
        if code == 250:
            code, text = smtp.rcpt(rcpt)
        if code == 250:
            code, text = smtp.data(wire)
    return code, text.decode()


# Large messages (issue 14, item 6) --------------------------------------------------------


def big_bounce(delivery: Delivery, size: int) -> bytes:
    """A Postfix bounce returning the whole newsletter with a large attachment."""
    raw = samples.load(
        "postfix_hard",
        rcpt=delivery.subscriber.email,
        message_id=tokens.message_id(delivery.pk),
        verp=tokens.return_path(delivery.pk),
    )
    body = b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable"
    at = raw.index(body)
    end = raw.index(b"\n--3F2A1C0123.1741686067/mx1.example.net--")
    blob = base64.encodebytes(random.Random(1).randbytes(size * 3 // 4))
    return (
        raw[:at]
        + b'Content-Type: multipart/mixed; boundary="att"\n\n--att\n'
        + body
        + b"\n\nHello, the minutes are attached.\n--att\n"
        + b'Content-Type: application/pdf; name="minutes.pdf"\n'
        + b"Content-Transfer-Encoding: base64\n\n"
        + blob
        + b"--att--\n"
        + raw[end:]
    )


def many_parts_complaint(delivery: Delivery, size: int) -> bytes:
    """A complaint whose original is a message of tens of thousands of small parts."""
    raw = samples.load(
        "microsoft_jmrp",
        rcpt=delivery.subscriber.email,
        message_id=tokens.message_id(delivery.pk),
        verp=tokens.return_path(delivery.pk),
    )
    at = raw.index(b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding")
    end = raw.index(b"\n--C3A17E52-90B4-4D6E-8F21-6A5D0E9B7C14--")
    part = b"--p\nContent-Type: text/plain\n\nOne line of a long, long thread.\n"
    parts = part * (size // len(part))
    return (
        raw[:at]
        + b'Content-Type: multipart/mixed; boundary="p"\n\n'
        + parts
        + b"--p--\n"
        + raw[end:]
    )


@pytest.mark.parametrize("shape", ["attachment", "many_parts"])
def test_a_5_mb_report_is_processed_at_2_mb_per_second_or_faster(endpoint, delivery, shape):
    """The review measured 15.6 s for 5 MB: everything was parsed, walked and decoded."""
    if shape == "attachment":
        raw, rcpt = big_bounce(delivery, 5 * MB), tokens.return_path(delivery.pk)
    else:
        raw, rcpt = many_parts_complaint(delivery, 5 * MB), "fbl@bounces.localhost"
    assert len(raw) > 5 * MB
    started = time.perf_counter()
    code, text = send(endpoint, raw, rcpt)
    seconds = time.perf_counter() - started
    assert code == 250, text
    assert seconds < 2.5, f"{len(raw) / MB / seconds:.2f} MB/s"
    report = InboundReport.objects.get()
    kind = "hard" if shape == "attachment" else "complaint"
    assert report.outcome == f"{kind}: subscriber {delivery.subscriber_id}"


def test_only_what_is_read_is_kept_of_a_large_message(endpoint, delivery):
    """The attachment and the original's body are the subscriber's mail, not evidence."""
    raw = big_bounce(delivery, 5 * MB)
    assert send(endpoint, raw, tokens.return_path(delivery.pk))[0] == 250
    report = InboundReport.objects.get()
    kept = bytes(report.raw)
    assert report.size == len(raw.replace(b"\n", b"\r\n"))
    assert len(kept) < 64 * 1024
    assert b"Final-Recipient: rfc822; reader0@example.net" in kept
    assert f"Message-ID: <{tokens.message_id(delivery.pk)}>".encode() in kept
    assert b"minutes.pdf" in kept  # the attachment's header fields, not its contents


def test_the_endpoint_takes_what_the_mail_nodes_postfix_takes(endpoint, delivery):
    """Postfix (ansible mail_node role) accepted 15 MiB, the endpoint refused over 10 MiB:
    Postfix then returned the bounce to its sender. Both now read one number."""
    role = yaml.safe_load((ROOT / "ansible/roles/mail_node/defaults/main.yml").read_text())
    postfix_limit = int(role["mail_node_message_size_limit"])
    assert postfix_limit == settings.NEWSLETTER_INBOUND_MAX_BYTES
    # As large as Postfix takes, plus the Received field it adds on the way.
    raw = big_bounce(delivery, postfix_limit - 8 * 1024)
    raw = b"Received: from mx.example.net by mail.bounces.example.coop (Postfix)\n" + raw
    assert len(raw.replace(b"\n", b"\r\n")) > postfix_limit
    code, text = send(endpoint, raw, tokens.return_path(delivery.pk))
    assert code == 250, text
    assert BounceEvent.objects.filter(subscriber=delivery.subscriber).count() == 1
    # Well beyond it, the refusal is permanent (552), never a try-again-later.
    with smtplib.SMTP("127.0.0.1", endpoint, timeout=120) as smtp:
        smtp.ehlo()
        code, _text = smtp.mail("", [f"SIZE={3 * postfix_limit}"])
    assert code == 552
    assert Subscriber.objects.get(pk=delivery.subscriber_id).status == SubscriberStatus.CONFIRMED


# Retention --------------------------------------------------------------------------------


def test_inbound_messages_and_bounce_logs_go_after_the_retention_time_consent_stays(
    endpoint, delivery, settings
):
    import newsletters.tasks  # noqa: F401  (registers the tasks, as a worker's autodiscovery does)

    settings.NEWSLETTER_RETENTION_DAYS = 30
    settings.NEWSLETTER_PAUSE_MIN_COMPLAINERS = 1
    reader = delivery.subscriber
    old_bounce = samples.load(
        "postfix_hard",
        rcpt=reader.email,
        message_id=tokens.message_id(delivery.pk),
        verp=tokens.return_path(delivery.pk),
    )
    complaint = samples.load(
        "arf_headers_only",
        rcpt=reader.email,
        message_id=tokens.message_id(delivery.pk),
        verp=tokens.return_path(delivery.pk),
    )
    assert send(endpoint, old_bounce, tokens.return_path(delivery.pk))[0] == 250
    assert send(endpoint, b"no header at all\n", tokens.return_path(delivery.pk))[0] == 250
    assert send(endpoint, complaint, "fbl@bounces.localhost")[0] == 250
    consent_before = ConsentEvent.objects.filter(subscriber=reader).count()
    assert consent_before == 3  # subscribe, confirm, and the unsubscribe the complaint made
    # The first two are 31 days old, the complaint 29.
    now = timezone.now()
    first_two = InboundReport.objects.order_by("pk")[:2]
    for report in first_two:
        InboundReport.objects.filter(pk=report.pk).update(received_at=now - timedelta(days=31))
        BounceEvent.objects.filter(report=report).update(at=now - timedelta(days=31))
    recent = InboundReport.objects.order_by("-pk")[0]
    InboundReport.objects.filter(pk=recent.pk).update(received_at=now - timedelta(days=29))
    BounceEvent.objects.filter(report=recent).update(at=now - timedelta(days=29))

    # The daily job, by the name the beat schedule gives it.
    (entry,) = [e for e in app.conf.beat_schedule.values() if "retention" in e["task"]]
    assert entry["schedule"] <= 86400
    result = app.tasks[entry["task"]].apply().get()
    assert result == {"events": 1, "messages": 2}
    assert list(InboundReport.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(BounceEvent.objects.values_list("kind", flat=True)) == ["complaint"]
    assert ConsentEvent.objects.filter(subscriber=reader).count() == consent_before
    # What the reports did stays: the score, the status.
    reader.refresh_from_db()
    assert (reader.bounce_score, reader.status) == (1, SubscriberStatus.COMPLAINED)
    # Nothing left to purge: a second run deletes nothing.
    assert app.tasks[entry["task"]].apply().get() == {"events": 0, "messages": 0}


# The DATA reader --------------------------------------------------------------------------


class Keep:
    """A DATA hook that keeps the bytes, to compare the endpoint's reader with aiosmtpd's."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.got.append(bytes(envelope.original_content))
        return "250 OK"


@contextlib.contextmanager
def listening(controller_class: Any, handler: Keep, limit: int) -> Iterator[int]:
    port = free_port()
    controller = controller_class(
        handler, hostname="127.0.0.1", port=port, data_size_limit=limit, ready_timeout=10
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def raw_session(port: int, chunks: list[bytes], *, pause: float = 0.0) -> list[bytes]:
    """Send bytes as they are (in these pieces), return the server's reply lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            if pause:
                time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            more = sock.recv(65536)
            if not more:
                break
            received += more
    return [line for line in received.split(b"\r\n") if line]


DATA_CASES = [
    b"",
    b"\r\n",
    b"Subject: x\r\n\r\nbody\r\n",
    b".leading dot\r\n..two\r\n...three\r\nend.\r\n",
    b"a line that ends in a dot.\r\n.\r\n".replace(b"\r\n.\r\n", b"\r\n..\r\n"),
    b"long " + b"y" * 5000 + b"\r\n",
    b"bare\nline feeds\rand returns\r\n",
    b"x\r\n" * 20000,
]


@pytest.mark.parametrize("content", DATA_CASES)
def test_the_block_reader_gets_the_bytes_aiosmtpd_gets(content: bytes) -> None:
    """Dot-stuffed on the wire, byte for byte the same message after (RFC 5321 4.5.2)."""
    wire = re.sub(rb"(?:^|(?<=\r\n))\.", b"..", content) + b".\r\n"
    session = [b"EHLO t\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n", wire, b"QUIT\r\n"]
    ours, reference = Keep(), Keep()
    with listening(inbound._Controller, ours, 50_000_000) as port:
        replies = raw_session(port, session)
    with listening(Controller, reference, 50_000_000) as port:
        reference_replies = raw_session(port, session)
    assert ours.got == [content]
    if len(max(content.split(b"\r\n"), key=len)) < 1000:
        # aiosmtpd refuses lines over 1000 bytes; the endpoint takes them.
        assert reference.got == [content]
        assert replies == reference_replies


def test_the_block_reader_finds_the_end_across_any_split_and_pipelined_commands() -> None:
    content = b"one\r\n.two\r\nthree.\r\n"
    wire = b"one\r\n..two\r\nthree.\r\n.\r\n"
    # One byte at a time, the end of the data split every way.
    ours = Keep()
    with listening(inbound._Controller, ours, 1_000_000) as port:
        head = b"EHLO t\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"
        replies = raw_session(
            port, [head, *[wire[i : i + 1] for i in range(len(wire))]], pause=0.002
        )
    assert ours.got == [content]
    assert replies[-1] == b"250 OK"
    # Two messages and QUIT in one write, as a pipelining client may send after the data.
    ours = Keep()
    with listening(inbound._Controller, ours, 1_000_000) as port:
        replies = raw_session(
            port,
            [
                b"EHLO t\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n",
                wire + b"MAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
                b"second\r\n.\r\nQUIT\r\n",
            ],
        )
    assert ours.got == [content, b"second\r\n"]
    assert replies.count(b"250 OK") >= 2
    assert replies[-1].startswith(b"221")


def test_the_block_reader_refuses_too_much_data_for_good_and_stays_usable() -> None:
    ours = Keep()
    big = b"z" * 70 + b"\r\n"
    with listening(inbound._Controller, ours, 100_000) as port:
        replies = raw_session(
            port,
            [
                b"EHLO t\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n",
                big * 5000 + b".\r\n",
                b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n",
                b"small\r\n.\r\nQUIT\r\n",
            ],
        )
    assert [r for r in replies if r.startswith(b"552")] == [b"552 5.3.4 Error: Too much mail data"]
    assert ours.got == [b"small\r\n"]
