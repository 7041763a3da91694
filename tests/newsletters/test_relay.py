"""The deduplicating SMTP relay over real sockets: smtplib -> relay -> an aiosmtpd next hop.

Real sockets and a real SMTP server as the next hop, because what the relay promises (bytes
unchanged, one delivery per Message-ID under concurrency) lives in the SMTP exchanges.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings

from newsletters.relay import DedupRelay, message_id
from tests.conftest import ROOT, free_port

SENDER = "news@coop.example"
MEMBER = "member@example.org"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class RawSink:
    """A next hop that keeps the exact bytes and envelope it accepted, and answers as told.

    tests.conftest.SmtpSink keeps parsed messages and always accepts; these tests compare bytes
    and need refusals.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.attempts = 0
        self.reply = "250 OK"
        self.replies: list[str] = []  # the answers to the next messages, before `reply`
        self.refuse_rcpt: dict[str, str] = {}
        self.delay = 0.0
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port)

    def restart(self) -> None:
        # A stopped Controller has closed its event loop; a new one takes over the port.
        self.controller.stop()
        self.controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def contents(self) -> list[bytes]:
        with self.lock:
            return [r.content for r in self.received]


class _SinkHandler:
    def __init__(self, sink: RawSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.sink.refuse_rcpt.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        with self.sink.lock:
            self.sink.attempts += 1
            reply = self.sink.replies.pop(0) if self.sink.replies else self.sink.reply
            if reply.startswith("250"):
                self.sink.received.append(
                    Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content)
                )
        return reply


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd() -> Iterator[None]:
    # aiosmtpd logs every command at INFO; over a thousand messages that is most of the run.
    logger = logging.getLogger("mail.log")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def sink() -> Iterator[RawSink]:
    sink = RawSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


RelayFactory = Callable[..., DedupRelay]


@pytest.fixture
def start_relay(tmp_path: Path, sink: RawSink) -> Iterator[RelayFactory]:
    """Starts relays (by default: to the sink, one store per test), stopped after the test.

    A factory rather than one relay, because some tests need a second relay on the same store.
    """
    started: list[DedupRelay] = []

    def start(**kwargs: Any) -> DedupRelay:
        kwargs.setdefault("next_hop", f"smtp://127.0.0.1:{sink.port}")
        kwargs.setdefault("store", tmp_path / "relay" / "seen.sqlite3")
        relay = DedupRelay(host="127.0.0.1", port=free_port(), **kwargs)
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(start_relay: RelayFactory) -> DedupRelay:
    return start_relay()


def message(mid: str | None, *, body: str = "Hello, member.\r\n") -> bytes:
    headers = [f"From: {SENDER}", f"To: {MEMBER}", "Subject: Spring assembly"]
    if mid is not None:
        headers.append(f"Message-ID: <{mid}>")
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def connect(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo()
    return client


def submit(
    client: smtplib.SMTP,
    content: bytes,
    *,
    sender: str = SENDER,
    rcpts: Sequence[str] = (MEMBER,),
    mail_options: Sequence[str] = (),
) -> tuple[int, str]:
    """One transaction; the first refusal on the way, or the reply to the message data.

    Unlike sendmail(), it returns the 250 text too, which tells accepted from dropped.
    """
    code, text = client.mail(sender, list(mail_options))
    if code == 250:
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                break
        else:
            code, text = client.data(content)
            return code, text.decode()
    client.rset()
    return code, text.decode()


def send(port: int, content: bytes) -> tuple[int, str]:
    with connect(port) as client:
        return submit(client, content)


def remembered(relay: DedupRelay) -> set[str]:
    with sqlite3.connect(relay.store) as db:
        return {row[0] for row in db.execute("SELECT message_id FROM seen")}


# Reading the Message-ID ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Subject: x\r\nMessage-ID: <a.1@coop.example>\r\n\r\nbody", "a.1@coop.example"),
        (b"message-id:   <A@B>  \r\n\r\n", "A@B"),
        (
            b"Subject: x\r\nMESSAGE-ID:\r\n\t<folded@coop.example>\r\nTo: y\r\n\r\n",
            "folded@coop.example",
        ),
        (b"Message-Id: <lf@coop.example>\nSubject: unix line ends\n\nbody\n", "lf@coop.example"),
        (b"Message-ID: bare@coop.example\r\n", "bare@coop.example"),
        (b"Subject: x\r\n\r\nMessage-ID: <in-the-body@coop.example>\r\n", None),
        (b"\r\nMessage-ID: <after-an-empty-line@coop.example>\r\n", None),
        (b"Subject: no id\r\nX-Message-ID: <other@coop.example>\r\n\r\n", None),
        (b"Message-ID: <>\r\n\r\n", None),
        (b"", None),
    ],
)
def test_message_id_is_read_from_the_header_block(content: bytes, expected: str | None) -> None:
    assert message_id(content) == expected


def test_allows_only_the_given_networks(tmp_path: Path) -> None:
    relay = DedupRelay(host="127.0.0.1", port=1, store=tmp_path / "s", next_hop="smtp://x:25")
    assert relay.allows(("127.0.0.1", 4242))
    assert relay.allows(("::1", 4242, 0, 0))
    assert relay.allows(("::ffff:127.0.0.1", 4242, 0, 0))
    assert not relay.allows(("192.0.2.7", 4242))
    assert not relay.allows("not an address")


@pytest.mark.parametrize("next_hop", ["smtp://", "smtp://x:notaport", "http://x", "maildir:", "x"])
def test_a_next_hop_must_be_smtp_or_maildir(tmp_path: Path, next_hop: str) -> None:
    with pytest.raises(ValueError, match="next hop"):
        DedupRelay(host="127.0.0.1", port=1, store=tmp_path / "s", next_hop=next_hop)


# Through the relay -----------------------------------------------------------------------


def test_a_message_goes_through_unchanged(relay: DedupRelay, sink: RawSink) -> None:
    content = (
        b"From: news@coop.example\r\nTo: a@example.org, b@example.org\r\n"
        b"Subject: =?utf-8?q?Fr=C3=BChling?=\r\nMessage-ID: <unchanged@coop.example>\r\n"
        b"X-Long: folded\r\n\tcontinued\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"Gr\xc3\xbc\xc3\x9fe.\r\n.a line that starts with a dot\r\n..two dots\r\n\r\n"
        b"Message-ID: <in-the-body@coop.example>\r\n"
    )
    rcpts = ["a@example.org", "b@example.org"]
    with connect(relay.port) as client:
        reply = submit(
            client,
            content,
            sender="bounces@coop.example",
            rcpts=rcpts,
            mail_options=["BODY=8BITMIME"],
        )
    assert reply == (250, "2.0.0 Accepted")
    assert sink.received == [Received("bounces@coop.example", tuple(rcpts), content)]
    assert (relay.accepted, relay.dropped, relay.rejected) == (1, 0, 0)
    assert remembered(relay) == {"unchanged@coop.example"}


def test_the_same_message_id_twice_is_forwarded_once(relay: DedupRelay, sink: RawSink) -> None:
    with connect(relay.port) as client:
        first = submit(client, message("twice@coop.example"))
        second = submit(client, message("twice@coop.example", body="A retry.\r\n"))
    assert first == (250, "2.0.0 Accepted")
    assert second == (250, "2.0.0 Duplicate of an accepted message; dropped")
    assert sink.contents() == [message("twice@coop.example")]
    assert (relay.accepted, relay.dropped) == (1, 1)


def test_a_message_without_message_id_is_forwarded_every_time(
    relay: DedupRelay, sink: RawSink
) -> None:
    with connect(relay.port) as client:
        assert submit(client, message(None))[0] == 250
        assert submit(client, message(None))[0] == 250
    assert sink.contents() == [message(None)] * 2
    assert remembered(relay) == set()


def test_the_store_survives_a_restart(start_relay: RelayFactory, sink: RawSink) -> None:
    first = start_relay()
    assert send(first.port, message("restart@coop.example"))[0] == 250
    first.stop()

    second = start_relay()
    assert send(second.port, message("restart@coop.example"))[0] == 250
    assert second.dropped == 1
    assert len(sink.received) == 1


def test_old_message_ids_are_pruned_at_start(start_relay: RelayFactory, sink: RawSink) -> None:
    first = start_relay()
    send(first.port, message("old@coop.example"))
    first.stop()
    with sqlite3.connect(first.store) as db:
        db.execute("UPDATE seen SET accepted_at = ?", (int(time.time()) - 31 * 86400,))

    second = start_relay(keep_days=30)
    assert send(second.port, message("old@coop.example")) == (250, "2.0.0 Accepted")
    assert len(sink.received) == 2


def test_a_temporary_refusal_is_passed_on_and_not_remembered(
    relay: DedupRelay, sink: RawSink
) -> None:
    sink.reply = "451 4.3.0 Try again later"
    assert send(relay.port, message("later@coop.example")) == (451, "4.3.0 Try again later")
    assert sink.received == []
    assert remembered(relay) == set()
    assert relay.deferred == 1

    sink.reply = "250 OK"
    assert send(relay.port, message("later@coop.example")) == (250, "2.0.0 Accepted")
    assert sink.contents() == [message("later@coop.example")]


def test_a_permanent_refusal_is_passed_on(relay: DedupRelay, sink: RawSink) -> None:
    sink.reply = "550 5.7.1 Not welcome here"
    code, text = send(relay.port, message("refused@coop.example"))
    assert 500 <= code < 600
    assert text == "5.7.1 Not welcome here"
    assert (relay.rejected, relay.accepted) == (1, 0)
    assert remembered(relay) == set()


def test_one_refused_recipient_refuses_the_whole_message(relay: DedupRelay, sink: RawSink) -> None:
    # Delivering to the others and remembering the Message-ID would drop the retry for the
    # refused one; so it is all or nothing.
    sink.refuse_rcpt["gone@example.org"] = "550 5.1.1 No such user"
    with connect(relay.port) as client:
        code, text = submit(
            client, message("partial@coop.example"), rcpts=[MEMBER, "gone@example.org"]
        )
        assert (code, text) == (550, "5.1.1 No such user")
        # The connection to the next hop was reset, not spoiled: the next message goes through.
        assert submit(client, message("next@coop.example"))[0] == 250
    assert sink.contents() == [message("next@coop.example")]


def test_next_hop_down_is_a_temporary_failure(start_relay: RelayFactory, sink: RawSink) -> None:
    relay = start_relay(next_hop=f"smtp://127.0.0.1:{free_port()}")
    code, text = send(relay.port, message("nobody-home@coop.example"))
    assert code == 451
    assert "unreachable" in text
    assert relay.deferred == 1
    assert remembered(relay) == set()


def test_connections_to_the_next_hop_are_reused_and_renewed(
    relay: DedupRelay, sink: RawSink
) -> None:
    with connect(relay.port) as client:
        for n in range(5):
            assert submit(client, message(f"reuse-{n}@coop.example"))[0] == 250
        # The next hop restarts: the kept connections are dead, and the relay must notice
        # before the next message rather than answer 451.
        sink.restart()
        assert submit(client, message("after-restart@coop.example")) == (250, "2.0.0 Accepted")
    assert len(sink.received) == 6


def test_a_message_over_10_mib_is_refused(relay: DedupRelay, sink: RawSink) -> None:
    big = message("big@coop.example") + (b"y" * 998 + b"\r\n") * (11 * 1024)
    assert send(relay.port, big)[0] == 552
    assert sink.received == []


def test_a_peer_outside_allow_is_refused(start_relay: RelayFactory, sink: RawSink) -> None:
    relay = start_relay(allow=["10.0.0.0/8"])
    code, _ = send(relay.port, message("outsider@coop.example"))
    assert code == 554
    assert sink.received == []
    assert sink.attempts == 0


def test_maildir_next_hop(start_relay: RelayFactory, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    relay = start_relay(next_hop=f"maildir:{outbox}")
    sent = [message("md-1@coop.example"), message("md-2@coop.example", body="Second.\r\n")]
    with connect(relay.port) as client:
        for content in [*sent, sent[0]]:
            assert submit(client, content)[0] == 250
    files = sorted((outbox / "new").iterdir())
    assert len(files) == 2
    assert sorted(f.read_bytes() for f in files) == sorted(sent)
    assert list((outbox / "tmp").iterdir()) == []
    assert (outbox / "cur").is_dir()
    assert relay.dropped == 1


# Concurrency -----------------------------------------------------------------------------


def test_twenty_clients_at_once(relay: DedupRelay, sink: RawSink) -> None:
    originals = [message(f"bulk-{n}@coop.example", body=f"Number {n}.\r\n") for n in range(1000)]
    work = originals + random.Random(7).sample(originals, 200)
    random.Random(8).shuffle(work)
    replies: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(share: list[bytes]) -> None:
        try:
            with connect(relay.port) as smtp:
                codes = [submit(smtp, content)[0] for content in share]
        except BaseException as exc:
            errors.append(exc)
            raise
        with lock:
            replies.extend(codes)

    threads = [threading.Thread(target=client, args=(work[n::20],)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert replies == [250] * 1200

    ids = Counter(message_id(content) for content in sink.contents())
    assert len(ids) == 1000
    assert set(ids.values()) == {1}
    assert sorted(sink.contents()) == sorted(originals)
    assert (relay.accepted, relay.dropped) == (1000, 200)


def race(port: int, content: bytes, sessions: int = 2) -> list[tuple[int, str]]:
    """The same message from several sessions, their DATA sent as close together as possible.

    The envelopes are given first and the sessions wait at a barrier, so that only the message
    data is left to send when they are released together.
    """
    replies: list[tuple[int, str]] = []
    lock = threading.Lock()
    clients = [connect(port) for _ in range(sessions)]
    barrier = threading.Barrier(sessions)

    def one(client: smtplib.SMTP) -> None:
        client.mail(SENDER)
        client.rcpt(MEMBER)
        barrier.wait()
        code, text = client.data(content)
        with lock:
            replies.append((code, text.decode()))

    threads = [threading.Thread(target=one, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.quit()
    return sorted(replies)


def test_two_sessions_racing_the_same_new_message_id(relay: DedupRelay, sink: RawSink) -> None:
    # The next hop takes its time, so that the second session arrives while the first is
    # still being forwarded.
    sink.delay = 0.5
    replies = race(relay.port, message("race@coop.example"))
    assert replies == [
        (250, "2.0.0 Accepted"),
        (250, "2.0.0 Duplicate of an accepted message; dropped"),
    ]
    assert sink.attempts == 1
    assert sink.contents() == [message("race@coop.example")]


def test_a_racing_session_forwards_itself_when_the_first_was_refused(
    relay: DedupRelay, sink: RawSink
) -> None:
    sink.delay = 0.5
    sink.replies = ["451 4.3.0 Busy"]
    replies = race(relay.port, message("race-busy@coop.example"))
    assert replies == [(250, "2.0.0 Accepted"), (451, "4.3.0 Busy")]
    assert sink.attempts == 2
    assert sink.contents() == [message("race-busy@coop.example")]


# The management command ------------------------------------------------------------------


def connect_when_listening(port: int, proc: subprocess.Popen[str]) -> smtplib.SMTP:
    deadline = time.monotonic() + 60
    while True:
        try:
            return connect(port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"the relay did not start:\n{out}\n{err}") from None
            time.sleep(0.1)


def test_the_management_command(tmp_path: Path, sink: RawSink) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PANEL_STATE_DIR": str(tmp_path / "state"),
        "SECRET_KEY": settings.SECRET_KEY,
    }
    command = [
        sys.executable,
        "manage.py",
        "newsletter_relay",
        "--listen",
        f"127.0.0.1:{port}",
        "--store",
        str(tmp_path / "seen.sqlite3"),
        "--next-hop",
        f"smtp://127.0.0.1:{sink.port}",
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with connect_when_listening(port, proc) as client:
            assert submit(client, message("command@coop.example")) == (250, "2.0.0 Accepted")
            assert submit(client, message("command@coop.example"))[0] == 250
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "relay stopped: 1 accepted, 1 dropped as duplicates, 0 rejected, 0 deferred" in out
    assert "Message-ID <command@coop.example>: accepted" in err
    assert "Message-ID <command@coop.example>: dropped (duplicate)" in err
    assert sink.contents() == [message("command@coop.example")]
