"""The deduplicating SMTP relay between the panel and the mail node's MTA.

The panel sends each campaign message once per subscriber, and a retried delivery carries the
Message-ID of the first attempt. One window the panel cannot close by itself: a worker is killed
after the relay answered 250 to DATA but before the panel committed "submitted"; the lease
expires and the message is sent again. The relay closes that window: it remembers the
Message-ID of every message its next hop accepted, and answers 250 without forwarding when the
same Message-ID comes again. In production it listens in front of Postfix (panel -> relay :2525
-> Postfix on localhost:25); in the demo it writes into a Maildir, the outbox admins browse.

Order per message, and why. The relay forwards first and records the Message-ID (one SQLite
commit) only once the next hop accepted the message; only then does it answer 250. Recording
first would turn a crash or a refusal between the record and the forward into a message that is
never sent, because its retry would be dropped as a duplicate. A newsletter sent twice is a
nuisance; one silently lost is a broken promise to a member, so the relay chooses at-least-once.
The residual window: the relay process dies after the next hop accepted a message and before the
SQLite commit. Its client saw no 250 and retries, the relay does not know the Message-ID, and the
message goes out twice. It is never lost. The same holds for a connection to the next hop lost
after the message data went out (the outcome is unknown, the client gets 451 and retries), and
for a power failure, which may forget the last commits (the store does not fsync each one; a
commit survives the death of the process, which is the failure the store is for).

Further choices:

- A message with several recipients is forwarded to all of them or to none: a partial delivery
  would be recorded as accepted, and the retry for the refused recipients then dropped.
- Two sessions carrying the same new Message-ID at once are serialized: the second waits for
  the first's outcome, then is dropped (accepted) or forwarded itself (refused, deferred).
- The forward is blocking smtplib in a thread pool, so that a slow next hop stalls only the
  sessions waiting for it; each pool thread reuses a connection to the next hop, because a
  handshake per message would cap the rate the panel pushes at (hundreds per second).
- A message without a Message-ID is forwarded without deduplication: there is nothing to key it
  on, and dropping it would lose it.

Two ways to run it, with the same options: `manage.py newsletter_relay` from the panel's release,
and standalone on a mail node, where nothing but this file, Python and aiosmtpd (Debian's
python3-aiosmtpd) is installed:

    python3 relay.py --listen 0.0.0.0:2525 --store /var/lib/newsletter-relay/seen.sqlite3 \
        --next-hop smtp://127.0.0.1:25 --allow 192.0.2.10/32

The module therefore imports nothing of Django or the panel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import signal
import smtplib
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from aiosmtpd.controller import Controller

# Named, not __name__: run as a script, the module is __main__, and its log lines should say.
log = logging.getLogger("newsletters.relay")

MAX_MESSAGE_SIZE = 10 * 1024 * 1024
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
PRUNE_INTERVAL = 3600.0

REPLY_ACCEPTED = "250 2.0.0 Accepted"
REPLY_DUPLICATE = "250 2.0.0 Duplicate of an accepted message; dropped"
REPLY_DENIED = "554 5.7.1 Relay access denied"
REPLY_RELAY_ERROR = "451 4.3.0 Relay error; try again later"

Outcome = Literal["accepted", "dropped", "rejected", "deferred"]


def message_id(content: bytes) -> str | None:
    """The Message-ID of a message without its angle brackets, or None when it has none.

    Only the header block counts (up to the first empty line): a body may quote the headers of
    another message, as a forward or a bounce does, and that Message-ID is not this message's.
    """
    found: bytes | None = None  # the Message-ID field so far, while its continuation lines follow
    for line in _header_lines(content):
        if line[:1] in (b" ", b"\t"):
            if found is not None:
                found += line
            continue
        if found is not None:
            break
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            found = value
    if found is None:
        return None
    # Latin-1 maps every byte to one character, so distinct raw IDs stay distinct keys.
    text = found.decode("latin-1").strip()
    if text.startswith("<") and ">" in text:
        text = text[1 : text.index(">")]
    return text.strip("<> \t") or None


def _header_lines(content: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(content):
        end = content.find(b"\n", start)
        if end == -1:
            end = len(content)
        line = content[start:end].rstrip(b"\r")
        if not line:
            return
        yield line
        start = end + 1


@dataclass(frozen=True)
class _Message:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...]


@dataclass(frozen=True)
class _Verdict:
    """What the next hop made of a message, and the reply the relay's client gets for it.

    The outcome feeds the counters and the log; the reply, already worded, goes back as is.
    """

    outcome: Literal["accepted", "rejected", "deferred"]
    reply: str


_ACCEPTED = _Verdict("accepted", REPLY_ACCEPTED)


def _verdict(code: int, text: bytes | str, *, permanent: str) -> _Verdict:
    """The reply for a next hop's refusal, carrying its text.

    The text goes back on one line: a multi-line reply of the next hop, passed through as is,
    would break the relay's own SMTP reply.
    """
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    detail = " ".join(raw.split()) or "(no text)"
    if 400 <= code < 500:
        return _Verdict("deferred", f"451 {detail}")
    if 500 <= code < 600:
        return _Verdict("rejected", f"{permanent} {detail}")
    return _Verdict("deferred", f"451 4.3.0 Next hop answered {code} {detail}")


class _NextHop(Protocol):
    def deliver(self, message: _Message) -> _Verdict: ...

    def close(self) -> None: ...


class _SmtpHop:
    """Forwards over SMTP on a small pool of connections that are kept open between messages.

    Each pool thread holds at most one connection at a time, so the pool never grows beyond the
    thread count.
    """

    # An MTA closes idle sessions (Postfix after 300 s); one idle this long is not worth trying.
    IDLE_LIMIT = 60.0

    def __init__(self, host: str, port: int, *, local_hostname: str, timeout: float = 30.0) -> None:
        self._host, self._port = host, port
        self._local_hostname = local_hostname
        self._timeout = timeout
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()

    def deliver(self, message: _Message) -> _Verdict:
        for attempt in (1, 2):
            try:
                conn = self._take(fresh=attempt > 1)
            except (OSError, smtplib.SMTPException) as exc:
                return _Verdict("deferred", f"451 4.4.1 Next hop unreachable: {exc}")
            try:
                code, text = conn.mail(message.mail_from, self._mail_options(conn, message))
            except smtplib.SMTPNotSupportedError as exc:
                self._give(conn)
                return _Verdict("rejected", f"554 5.6.7 Next hop: {exc}")
            except (OSError, smtplib.SMTPException):
                # A kept connection the next hop had dropped; nothing was sent, so trying once
                # more on a new connection cannot duplicate the message.
                _close(conn)
                continue
            if code == 421:
                _close(conn)
                continue
            break
        else:
            return _Verdict("deferred", "451 4.4.2 Next hop closed the connection")
        try:
            verdict = self._transaction(conn, message, code, text)
        except smtplib.SMTPDataError as exc:
            _close(conn)
            return _verdict(exc.smtp_code, exc.smtp_error, permanent="554")
        except (OSError, smtplib.SMTPException) as exc:
            # If the message data had gone out, the outcome is unknown: the client retries, and
            # the message may then be delivered twice (see the module docstring).
            _close(conn)
            return _Verdict("deferred", f"451 4.4.2 Next hop connection lost: {exc}")
        self._give(conn)
        return verdict

    def _transaction(
        self, conn: smtplib.SMTP, message: _Message, mail_code: int, mail_text: bytes
    ) -> _Verdict:
        if mail_code != 250:
            return _verdict(mail_code, mail_text, permanent="554")
        refusals = []
        for rcpt in message.rcpt_tos:
            code, text = conn.rcpt(rcpt)
            if code not in (250, 251):
                refusals.append((code, text))
        if refusals:
            # A connection lost here is given back all the same: smtplib has marked it closed,
            # and its next MAIL fails before anything is sent, which deliver() retries.
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.rset()
            # A permanent refusal wins: retrying the message cannot make it go through.
            code, text = next((r for r in refusals if r[0] >= 500), refusals[0])
            return _verdict(code, text, permanent="550")
        code, text = conn.data(message.content)
        if code == 250:
            return _ACCEPTED
        return _verdict(code, text, permanent="554")

    @staticmethod
    def _mail_options(conn: smtplib.SMTP, message: _Message) -> list[str]:
        options = []
        if conn.has_extn("size"):
            options.append(f"SIZE={len(message.content)}")
        if "BODY=8BITMIME" in message.mail_options and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if "SMTPUTF8" in message.mail_options:
            # smtplib refuses it (SMTPNotSupportedError) when the next hop lacks the extension.
            options.append("SMTPUTF8")
        return options

    def _take(self, *, fresh: bool) -> smtplib.SMTP:
        now = time.monotonic()
        stale = []
        conn = None
        with self._lock:
            while self._idle and not fresh:
                candidate, since = self._idle.pop()
                if now - since < self.IDLE_LIMIT:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            _close(old, polite=True)
        if conn is not None:
            return conn
        conn = smtplib.SMTP(
            self._host, self._port, local_hostname=self._local_hostname, timeout=self._timeout
        )
        try:
            conn.ehlo_or_helo_if_needed()
        except BaseException:
            _close(conn)
            raise
        return conn

    def _give(self, conn: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _close(conn, polite=True)


def _close(conn: smtplib.SMTP, *, polite: bool = False) -> None:
    try:
        if polite:
            conn.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        conn.close()


class _MaildirHop:
    """Delivers into a Maildir: written under tmp/, then renamed into new/.

    A reader of new/ therefore never sees a half-written message.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # The Maildir convention escapes the two characters a file name cannot hold.
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    def deliver(self, message: _Message) -> _Verdict:
        with self._lock:
            n = next(self._sequence)
        now = time.time_ns()
        name = f"{now // 10**9}.M{now // 1000 % 10**6}P{os.getpid()}Q{n}.{self._host}"
        tmp, new = self._root / "tmp" / name, self._root / "new" / name
        try:
            with tmp.open("xb") as out:
                out.write(message.content)
                out.flush()
                # Durable before the Message-ID is recorded, or a crash could lose a message
                # the relay then refuses to accept again.
                os.fsync(out.fileno())
            tmp.rename(new)
            _fsync_dir(new.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return _Verdict("deferred", f"451 4.3.0 Cannot write to the Maildir: {exc}")
        return _ACCEPTED

    def close(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SeenStore:
    """The Message-IDs the next hop accepted.

    In SQLite, because the duplicates this relay exists for arrive after a crash, and a relay
    restarted with it must still know them.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection for all pool threads, used in turn: each statement takes microseconds,
        # next to the SMTP round trip it follows.
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            log.warning("the store %s is in journal mode %s, not WAL", path, mode)
        # A commit then survives the death of the process without an fsync per message; what
        # a power failure may forget are duplicates-to-be, never messages.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen"
            " (message_id TEXT PRIMARY KEY, accepted_at INTEGER NOT NULL)"
        )
        # The hourly prune reads by age; without it, each prune scans the whole table.
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_accepted_at ON seen (accepted_at)")
        self._db.commit()

    def contains(self, message_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE message_id = ?", (message_id,))
            return row.fetchone() is not None

    def remember(self, message_id: str, *, at: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO seen (message_id, accepted_at) VALUES (?, ?)",
                (message_id, at),
            )
            self._db.commit()

    def prune(self, *, before: int) -> int:
        with self._lock:
            deleted = self._db.execute("DELETE FROM seen WHERE accepted_at < ?", (before,))
            self._db.commit()
            return deleted.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class _HopSpec:
    host: str = ""
    port: int = 0
    maildir: Path | None = None


def _parse_next_hop(spec: str) -> _HopSpec:
    if spec.startswith("maildir:"):
        path = spec.removeprefix("maildir:")
        if not path:
            raise ValueError(f"next hop {spec!r} names no Maildir path")
        return _HopSpec(maildir=Path(path).expanduser())
    parts = urlsplit(spec)
    if parts.scheme == "smtp" and parts.hostname and not parts.path.strip("/"):
        try:
            port = parts.port or 25
        except ValueError:
            raise ValueError(f"next hop {spec!r} has an invalid port") from None
        return _HopSpec(host=parts.hostname, port=port)
    raise ValueError(f"next hop {spec!r} is neither smtp://HOST[:PORT] nor maildir:PATH")


@dataclass
class _Running:
    """What exists only while the relay runs: start() makes it, stop() takes it apart.

    In one object, so that a stopped relay starts again from nothing left over, and the code that
    runs meanwhile needs no check for a missing part.
    """

    seen: _SeenStore
    hop: _NextHop
    pool: ThreadPoolExecutor
    inflight: dict[str, asyncio.Event] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    controller: Controller | None = None
    pruner: threading.Thread | None = None

    def release(self) -> None:
        self.pool.shutdown(wait=True)
        self.hop.close()
        self.seen.close()


class _Handler:
    """The aiosmtpd hooks: the peer check at MAIL, the relaying at DATA.

    Apart from DedupRelay, because aiosmtpd takes every handle_* attribute of a handler for a
    hook, and the relay's interface should not grow by accident.
    """

    def __init__(self, relay: DedupRelay, running: _Running) -> None:
        self._relay = relay
        self._running = running

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if not self._relay.allows(session.peer):
            log.warning("refused %s: not in the allowed networks", session.peer)
            return REPLY_DENIED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = _Message(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=bytes(envelope.original_content),
            mail_options=tuple(envelope.mail_options),
        )
        return await self._relay._receive(self._running, message)


class DedupRelay:
    """An SMTP relay that forwards each Message-ID once, then answers 250 and drops repeats.

    It runs on an aiosmtpd Controller in a thread of its own, so that the management command
    and the tests drive it alike with start() and stop(). Its counters, per message: accepted
    (the next hop took it), dropped (a repeat, answered 250), rejected (the next hop refused it
    for good, the client got a 5xx) and deferred (the client got a 4xx and should retry).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        store: Path,
        next_hop: str,
        allow: Sequence[str] = DEFAULT_ALLOW,
        keep_days: int = 30,
        workers: int = 8,
    ) -> None:
        if keep_days < 1:
            raise ValueError(f"keep_days must be at least 1, not {keep_days}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.host, self.port = host, port
        self.store = Path(store)
        self.next_hop = next_hop
        self.keep_days = keep_days
        self.workers = workers
        self._networks = tuple(ipaddress.ip_network(cidr) for cidr in allow)
        self._hop_spec = _parse_next_hop(next_hop)
        self._counts: dict[Outcome, int] = {
            "accepted": 0,
            "dropped": 0,
            "rejected": 0,
            "deferred": 0,
        }
        self._counts_lock = threading.Lock()
        self._running: _Running | None = None

    @property
    def accepted(self) -> int:
        return self._counts["accepted"]

    @property
    def dropped(self) -> int:
        return self._counts["dropped"]

    @property
    def rejected(self) -> int:
        return self._counts["rejected"]

    @property
    def deferred(self) -> int:
        return self._counts["deferred"]

    def allows(self, peer: Any) -> bool:
        """Whether a peer (an aiosmtpd session.peer, or an address) may use the relay.

        Only the panel's own hosts may: anyone else could send mail under the co-op's name.
        """
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        # A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def start(self) -> None:
        """Open the store, prune it, and listen; returns once the relay answers connections.

        The prune at start, besides the hourly one, keeps a relay that is restarted more often
        than hourly from growing its store without end.
        """
        if self._running is not None:
            raise RuntimeError("the relay is already running")
        fqdn = socket.getfqdn()
        seen = _SeenStore(self.store)
        try:
            self._prune(seen)
            hop = self._make_hop(local_hostname=fqdn)
        except BaseException:
            seen.close()
            raise
        running = _Running(seen, hop, ThreadPoolExecutor(self.workers, "relay-forward"))
        try:
            controller = Controller(
                _Handler(self, running),
                hostname=self.host,
                port=self.port,
                server_hostname=fqdn,
                data_size_limit=MAX_MESSAGE_SIZE,
            )
            controller.start()
        except BaseException:
            running.release()
            raise
        running.controller = controller
        running.pruner = threading.Thread(
            target=self._prune_hourly, args=(running,), name="relay-prune", daemon=True
        )
        running.pruner.start()
        self._running = running
        log.info("relay listening on %s:%s, next hop %s", self.host, self.port, self.next_hop)

    def stop(self) -> None:
        """Stop listening, let the forwards under way finish, and close the store.

        A forward under way completes and is recorded although its session is cut: its client
        saw no reply and retries, and the retry is then dropped instead of sent twice.
        """
        running, self._running = self._running, None
        if running is None:
            return
        running.stopping.set()
        if running.controller is not None:
            running.controller.stop()
        if running.pruner is not None:
            running.pruner.join()
        running.release()

    def __enter__(self) -> DedupRelay:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _make_hop(self, *, local_hostname: str) -> _NextHop:
        spec = self._hop_spec
        if spec.maildir is not None:
            return _MaildirHop(spec.maildir)
        return _SmtpHop(spec.host, spec.port, local_hostname=local_hostname)

    def _prune(self, seen: _SeenStore) -> None:
        deleted = seen.prune(before=int(time.time()) - self.keep_days * 86400)
        if deleted:
            log.info("pruned %d Message-IDs older than %d days", deleted, self.keep_days)

    def _prune_hourly(self, running: _Running) -> None:
        while not running.stopping.wait(PRUNE_INTERVAL):
            try:
                self._prune(running.seen)
            except sqlite3.Error:
                # A failed prune costs only disk space; the next hour tries again.
                log.exception("pruning the store failed")

    async def _receive(self, running: _Running, message: _Message) -> str:
        mid = message_id(message.content)
        if mid is None:
            return await self._forward(running, None, message)
        # Every session runs on this one event loop, so looking up and claiming the in-flight
        # entry with no await in between is atomic without a lock. A session finding the
        # Message-ID in flight waits for that outcome, then looks again: it is then dropped
        # (accepted) or forwards itself (refused), and never sends alongside the first.
        while (first := running.inflight.get(mid)) is not None:
            await first.wait()
        done = running.inflight[mid] = asyncio.Event()
        try:
            return await self._forward(running, mid, message)
        finally:
            del running.inflight[mid]
            done.set()

    async def _forward(self, running: _Running, mid: str | None, message: _Message) -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(running.pool, self._deliver, running, mid, message)
        except Exception:
            # A 5xx here would tell the panel to give the message up; a bug is no reason to.
            log.exception("relaying Message-ID %s failed", mid)
            self._count("deferred")
            return REPLY_RELAY_ERROR

    def _deliver(self, running: _Running, mid: str | None, message: _Message) -> str:
        """Look the Message-ID up, forward the message, record the Message-ID.

        All of it blocks, so it runs in a pool thread and keeps the event loop free for the
        other sessions.
        """
        label = f"<{mid}>" if mid is not None else "(none)"
        if mid is not None and running.seen.contains(mid):
            self._count("dropped")
            log.info("Message-ID %s: dropped (duplicate)", label)
            return REPLY_DUPLICATE
        verdict = running.hop.deliver(message)
        if verdict.outcome != "accepted":
            self._count(verdict.outcome)
            log.info("Message-ID %s: %s (%s)", label, verdict.outcome, verdict.reply)
            return verdict.reply
        if mid is not None:
            try:
                running.seen.remember(mid, at=int(time.time()))
            except sqlite3.Error:
                # The next hop has the message: a 4xx now would make the panel send it again
                # for certain, while the missing record only might.
                log.exception("recording Message-ID %s failed", label)
        self._count("accepted")
        log.info("Message-ID %s: accepted", label)
        return REPLY_ACCEPTED

    def _count(self, outcome: Outcome) -> None:
        with self._counts_lock:
            self._counts[outcome] += 1


# Running it: the options, the loop until a signal, and the standalone entry point ----------


def listen_address(value: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:2525).

    Checked by argparse, so that a typo fails before anything is opened, with the usage.
    """
    host, colon, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser, *, store_help: str) -> None:
    """The relay's options, for the standalone parser and the management command alike."""
    parser.add_argument(
        "--listen", type=listen_address, default=("127.0.0.1", 2525), metavar="HOST:PORT"
    )
    parser.add_argument("--store", type=Path, default=None, help=store_help)
    parser.add_argument("--next-hop", required=True, metavar="smtp://HOST:PORT|maildir:PATH")
    parser.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help=f"a network whose hosts may send; repeatable (default: {' '.join(DEFAULT_ALLOW)})",
    )
    parser.add_argument(
        "--keep-days",
        type=positive,
        default=30,
        help="how long an accepted Message-ID is remembered (default: 30)",
    )


def relay_from_options(options: argparse.Namespace | dict[str, Any], store: Path) -> DedupRelay:
    """A relay from parsed options; ValueError for a bad next hop or network."""
    values = vars(options) if isinstance(options, argparse.Namespace) else options
    host, port = values["listen"]
    return DedupRelay(
        host=host,
        port=port,
        store=store,
        next_hop=values["next_hop"],
        allow=values["allow"] or DEFAULT_ALLOW,
        keep_days=values["keep_days"],
    )


def serve(relay: DedupRelay, *, announce: Callable[[str], None]) -> None:
    """Start the relay, announce it, and run until SIGTERM or SIGINT; then stop it.

    Raises OSError when it cannot listen. Call it from the main thread (signal handlers).
    """
    # aiosmtpd logs every SMTP command at INFO: thousands of lines a second at campaign
    # rates, drowning the relay's one line per message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        relay.start()
        announce(
            f"relay listening on {relay.host}:{relay.port}, next hop {relay.next_hop}, "
            f"store {relay.store}"
        )
        stop.wait()
    finally:
        relay.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def summary(relay: DedupRelay) -> str:
    return (
        f"relay stopped: {relay.accepted} accepted, {relay.dropped} dropped as duplicates, "
        f"{relay.rejected} rejected, {relay.deferred} deferred"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """python3 relay.py --listen HOST:PORT --store FILE --next-hop smtp://HOST:PORT [...]

    The mail node's service runs this; it logs to stderr, one line per message.
    """
    parser = argparse.ArgumentParser(
        prog="relay.py",
        description="Forward each Message-ID once; answer 250 to repeats and drop them.",
    )
    add_arguments(parser, store_help="SQLite file of the accepted Message-IDs (required)")
    options = parser.parse_args(argv)
    if options.store is None:
        parser.error("--store is required")
    try:
        relay = relay_from_options(options, options.store)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    def announce(line: str) -> None:
        print(line, flush=True)  # noqa: T201  (the service's log)

    try:
        serve(relay, announce=announce)
    except OSError as exc:
        print(f"relay.py: cannot listen on {relay.host}:{relay.port}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    announce(summary(relay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
