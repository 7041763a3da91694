"""The mail node role for real, on a bare host: the dedup relay in front of Postfix.

The panel's side runs in this process: a sink smarthost (where Postfix sends the mail out to)
and the panel's inbound endpoint (newsletters.inbound, where Postfix relays the bounce domain
to), both on loopback, which the test host shares. The host's Postfix and relay listen on free
high ports, loopback only.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from newsletters import tokens
from newsletters.models import (
    BounceEvent,
    Delivery,
)
from tests.ansible.fixtures import PlaybookRun, run_playbook
from tests.conftest import SmtpSink, free_port
from tests.hosts.testhost import wait_for_port
from tests.newsletters import samples
from tests.newsletters.fixtures import inbound_endpoint, submitted_delivery

pytestmark = pytest.mark.ansible

READER = "reader0@example.net"


@pytest.fixture
def smarthost() -> Iterator[SmtpSink]:
    """Where Postfix sends outgoing mail (mail_node_relayhost), standing in for the internet."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def panel_inbound(transactional_db: None) -> Iterator[int]:
    """The panel's inbound endpoint (manage.py newsletter_inbound), on a free port."""
    with inbound_endpoint() as port:
        yield port


@pytest.fixture
def delivery(transactional_db: None, alice, statutes, carol) -> Delivery:
    """A delivery the relay accepted, whose bounce the panel will recognise."""
    return submitted_delivery(alice)


def newsletter(mid: str, *, sender: str) -> bytes:
    return (
        f"From: Alice's garden <garden@alice-news.example>\r\nTo: {READER}\r\n"
        f"Subject: Spring\r\nMessage-ID: <{mid}>\r\n\r\n"
        "The beans are up.\r\n"
    ).encode()


def submit(port: int, content: bytes, *, sender: str, rcpt: str) -> tuple[int, str]:
    """One SMTP transaction; the first refusal, or the reply to the message data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        code, text = smtp.mail(sender)
        if code == 250:
            code, text = smtp.rcpt(rcpt)
            if code == 250:
                code, text = smtp.data(content)
        return code, text.decode()


def big_bounce(dsn: bytes, size: int) -> bytes:
    """The DSN with an attachment in its returned message, `size` bytes in all (CRLF)."""
    at = dsn.index(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding")
    end = dsn.index(b"\r\n--3F2A1C0123.1741686067/mx1.example.net--")
    head = dsn[:at] + b'Content-Type: multipart/mixed; boundary="att"\r\n\r\n--att\r\n'
    head += b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    tail = b"--att--\r\n" + dsn[end:]
    line = b"QUJD" * 19 + b"\r\n"  # 78 bytes a line, as base64 is written
    return head + line * ((size - len(head) - len(tail)) // len(line)) + tail


def arrived(sink: SmtpSink, mid: str) -> int:
    return sum(1 for message in sink.messages if message["Message-ID"] == f"<{mid}>")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_mail_node_relays_once_routes_bounces_to_the_panel_and_is_idempotent(
    bare_host,
    deploy_key,
    tmp_path: Path,
    smarthost: SmtpSink,
    panel_inbound: int,
    delivery,
    artifacts: Path,
) -> None:
    smtp_port, relay_port = free_port(), free_port()
    bounce_domain = settings.NEWSLETTER_BOUNCE_DOMAIN
    extra_vars = {
        "mail_node_hostname": "mail.test.example",
        "mail_node_bounce_domain": bounce_domain,
        "mail_node_inbound_host": "127.0.0.1",
        "mail_node_inbound_port": panel_inbound,
        "mail_node_smtp_port": smtp_port,
        "mail_node_inet_interfaces": "loopback-only",
        "mail_node_inet_protocols": "ipv4",
        "mail_node_maillog_file": "/var/log/postfix.log",
        "mail_node_relayhost": f"[127.0.0.1]:{smarthost.port}",
        "mail_node_relay_listen": f"127.0.0.1:{relay_port}",
        "mail_node_relay_allow": ["127.0.0.0/8"],
    }

    def run(name: str) -> PlaybookRun:
        return run_playbook(
            "mail_node.yml",
            bare_host,
            deploy_key,
            group="mail_nodes",
            extra_vars=extra_vars,
            workdir=tmp_path / name,
        )

    def postfix_log() -> str:
        return bare_host.run(["sh", "-c", "cat /var/log/postfix.log 2>&1 | tail -40"], check=False)

    first = run("first")
    assert first.returncode == 0, first.output[-5000:]
    wait_for_port(smtp_port, timeout=30)
    wait_for_port(relay_port, timeout=30)

    # The relay is the service role's: an init script here, a unit on systemd servers.
    unit = bare_host.run(["cat", "/etc/systemd/system/newsletter-relay.service"])
    assert (
        f"ExecStart=/usr/bin/python3 /usr/local/lib/newsletter-relay/relay.py "
        f"--listen 127.0.0.1:{relay_port} --store /var/lib/newsletter-relay/seen.sqlite3 "
        f"--next-hop smtp://127.0.0.1:{smtp_port}"
    ) in unit
    assert "--allow 127.0.0.0/8" in unit
    pid = bare_host.run(["cat", "/run/newsletter-relay.pid"]).strip()
    uid = bare_host.run(["id", "-u", "newsletter-relay"]).strip()
    assert f"Uid:\t{uid}" in bare_host.run(["cat", f"/proc/{pid}/status"])

    # Postfix offers STARTTLS with the self-signed certificate.
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        smtp.starttls(context=context)
        certificate = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert certificate

    # A newsletter through the relay goes out through Postfix, once.
    sender = tokens.return_path(delivery.pk)
    mid = tokens.message_id(delivery.pk)
    assert submit(relay_port, newsletter(mid, sender=sender), sender=sender, rcpt=READER) == (
        250,
        "2.0.0 Accepted",
    )
    wait_until(
        lambda: arrived(smarthost, mid) == 1, f"the newsletter at the smarthost\n{postfix_log()}"
    )
    out_sender, out_rcpts, _raw = next(e for e in smarthost.envelopes if mid.encode() in e[2])
    assert (out_sender, out_rcpts) == (sender, [READER])
    # The same Message-ID again (a worker died before its commit): dropped by the relay.
    assert submit(relay_port, newsletter(mid, sender=sender), sender=sender, rcpt=READER) == (
        250,
        "2.0.0 Duplicate of an accepted message; dropped",
    )
    later = f"later.{mid}"
    assert (
        submit(relay_port, newsletter(later, sender=sender), sender=sender, rcpt=READER)[0] == 250
    )
    wait_until(lambda: arrived(smarthost, later) == 1, "the next newsletter at the smarthost")
    assert arrived(smarthost, mid) == 1
    stored = bare_host.run(
        [
            "python3",
            "-c",
            "import sqlite3; print(*sorted(r[0] for r in sqlite3.connect("
            "'/var/lib/newsletter-relay/seen.sqlite3').execute('SELECT message_id FROM seen')))",
        ]
    )
    assert stored.split() == sorted([mid, later])

    # A DSN from the recipient's MTA to the VERP address reaches the panel's inbound endpoint.
    subscriber = delivery.subscriber
    dsn = samples.load(
        "postfix_hard",
        rcpt=subscriber.email,
        message_id=mid,
        verp=sender,
        fbl=f"fbl@{bounce_domain}",
    )
    dsn = dsn.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    code, text = submit(smtp_port, dsn, sender="", rcpt=sender)
    assert code == 250, text

    def scored() -> bool:
        subscriber.refresh_from_db()
        return subscriber.bounce_score == 1

    wait_until(scored, f"the bounce at the panel\n{postfix_log()}")
    # A bounce as large as Postfix takes reaches the panel too: the endpoint's limit is
    # Postfix's (NEWSLETTER_INBOUND_MAX_BYTES = mail_node_message_size_limit), so Postfix never
    # has to return what it accepted (it refused over 10 MiB, Postfix took 15 MiB).
    large = big_bounce(dsn, settings.NEWSLETTER_INBOUND_MAX_BYTES - 256 * 1024)
    code, text = submit(smtp_port, large, sender="", rcpt=sender)
    assert code == 250, text

    def both_kept() -> bool:
        return BounceEvent.objects.filter(subscriber=subscriber).count() == 2

    wait_until(both_kept, f"the large bounce at the panel\n{postfix_log()}", timeout=120)
    # Only the addresses the panel takes are accepted for the bounce domain, and nothing is
    # relayed elsewhere except from this host (the test shares the host's loopback, so that is
    # what the unit test of the relay's allow-list and Postfix's mynetworks cover).
    code, _ = submit(smtp_port, dsn, sender="", rcpt=f"postmaster@{bounce_domain}")
    assert code == 550

    second = run("second")
    assert second.returncode == 0, second.output[-5000:]
    (artifacts / "ansible-mail_node.txt").write_text(
        f"first run: {first.seconds:.1f} s\n{first.recap_line()}\n"
        f"second run: {second.seconds:.1f} s\n{second.recap_line()}\n"
    )
    assert second.changed() == 0, second.recap_line()
    # Still running after the second run.
    again = f"again.{mid}"
    assert (
        submit(relay_port, newsletter(again, sender=sender), sender=sender, rcpt=READER)[0] == 250
    )
    wait_until(lambda: arrived(smarthost, again) == 1, "a newsletter after the second run")
