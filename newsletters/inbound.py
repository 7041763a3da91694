"""The endpoint where mail to the bounce domain arrives: bounces, complaints, unsubscribes.

An SMTP server (aiosmtpd) that the mail node's Postfix relays the bounce domain to
(`transport_maps`: bounce domain -> smtp:[panel]:8025). It accepts only the addresses the
panel hands out (VERP return paths, unsubscribe+TOKEN, the feedback-loop address) and hands
each message to :func:`newsletters.services.report_receive`. Plain SMTP rather than LMTP:
aiosmtpd answers DATA once, while LMTP clients wait for one answer per recipient.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, connections

from newsletters import tokens

log = logging.getLogger(__name__)

# The replies. Only the database being away defers a message: anything else that arrives is
# taken (and kept, and dropped if unreadable) or refused for good, because a deferral makes
# the mail node offer the same bytes again for days, and they will not read better then.
REPLY_DONE = "250 2.0.0 Processed"
REPLY_TRY_LATER = "451 4.3.0 Try again later"


def _receive(raw: bytes, recipients: list[str]) -> list[str]:
    """Process one message per recipient, on this pool thread's own database connection.

    The connection stays open between messages: Django's close_old_connections() closes it
    after each one with the default DATABASE_CONN_MAX_AGE of 0, and a new PostgreSQL
    connection per bounce cost more than the rest of its processing. One that broke (the
    database restarted, an idle timeout) is replaced once; each recipient's report is one
    transaction, kept once by its hash, so doing them again repeats nothing.
    """
    from newsletters.services import report_receive

    try:
        return [report_receive(raw=raw, recipient=r) for r in recipients]
    except (OperationalError, InterfaceError):
        connection.close()
    try:
        return [report_receive(raw=raw, recipient=r) for r in recipients]
    except (OperationalError, InterfaceError):
        connection.close()  # the next message tries a new one again
        raise


WORKERS = 4


class Handler:
    def __init__(self, allow: Sequence[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allow]
        # Django's ORM is synchronous; a few threads keep their database connections.
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="inbound")
        self.received = 0

    def close(self) -> None:
        """Close each pool thread's database connection, then the pool (the server stopped).

        A connection is its thread's to close: one task per thread, held at a barrier until
        every thread has one, so that no thread takes two.
        """
        barrier = threading.Barrier(WORKERS)

        def close_mine() -> None:
            try:
                barrier.wait(timeout=30)
            finally:
                connections.close_all()

        for future in [self.pool.submit(close_mine) for _ in range(WORKERS)]:
            try:
                future.result()
            except threading.BrokenBarrierError:
                log.warning("a pool thread was busy at stop; its connection closes with it")
        self.pool.shutdown(wait=True)

    def _allowed(self, peer: Any) -> bool:
        try:
            address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
        except (ValueError, TypeError, IndexError):
            return False
        return any(address in network for network in self.networks)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self._allowed(session.peer):
            return "554 5.7.1 Not accepting mail from this address"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if tokens.classify_recipient(address).kind == "unknown":
            return "550 5.1.1 No such address here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                self.pool, _receive, bytes(envelope.original_content), list(envelope.rcpt_tos)
            )
        except (OperationalError, InterfaceError) as exc:
            # The database is away: the MTA keeps the message and tries again. Nothing of it
            # was saved (report_receive is one transaction).
            log.warning(
                "database unavailable; deferred a report for %s: %s", envelope.rcpt_tos, exc
            )
            return REPLY_TRY_LATER
        self.received += 1
        for recipient, outcome in zip(envelope.rcpt_tos, outcomes, strict=True):
            log.info("report for %s: %s", recipient, outcome)
        return REPLY_DONE


def data_size_limit() -> int:
    """The largest message the endpoint takes on the wire; larger ones get 552 (permanent).

    NEWSLETTER_INBOUND_MAX_BYTES is the mail node's Postfix message_size_limit (ansible
    mail_node_message_size_limit): a message Postfix accepted for the bounce domain must not
    be refused here, or Postfix returns it to its sender, a bounce of a bounce. On its way
    here the message grows: Postfix adds its Received field, and the SMTP client sends CRLF
    where Postfix's queue file keeps line records; a sixteenth and 64 KiB more covers both
    for lines of 32 characters and longer.
    """
    limit = settings.NEWSLETTER_INBOUND_MAX_BYTES
    return limit + limit // 16 + 64 * 1024


_END_OF_DATA = b".\r\n"


class _Smtp(SMTP):
    """aiosmtpd's SMTP server, reading the message data in blocks instead of line by line.

    aiosmtpd reads DATA one line at a time, a few microseconds of Python each: a 5 MB
    message of short lines took it over 5 s, more than everything else the endpoint does with
    the message. Here the stream is read up to each ".\r\n" that comes (the reader hands
    back what precedes one in blocks, however long its lines), the end of the data is the one
    that begins a line, and the dots added at line starts (RFC 5321 4.5.2) are taken out in
    one pass. Lines longer than 1000 bytes are taken (the size limit bounds the message); a
    message over the size limit is read to its end and refused with 552, as aiosmtpd does.
    The rest (the envelope, the DATA hook, the state after it) is aiosmtpd's.
    """

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        if envelope is None or not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data, too_much = await self._read_data()
        except asyncio.CancelledError:
            # The connection was lost during DATA (aiosmtpd cancels the session's task).
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        if too_much:
            await self.push("552 5.3.4 Error: Too much mail data")
            self._set_post_data_state()
            return
        content = bytes(data)
        if content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        envelope.content = content
        envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytearray, bool]:
        """The data up to the line "." (without it), and whether it was over the size limit.

        Over the limit, what was read is dropped as it comes, but for the last two bytes that
        tell whether the next ".\r\n" begins a line.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        data = bytearray()
        dropped = 0
        while True:
            try:
                data += await reader.readuntil(_END_OF_DATA)
            except asyncio.LimitOverrunError as exc:
                # No ".\r\n" within the reader's limit: take what precedes it (the last two
                # bytes stay, in case they begin one).
                data += await reader.readexactly(exc.consumed)
            else:
                dot = len(data) - len(_END_OF_DATA)
                if (dropped == 0 and dot == 0) or data[dot - 2 : dot] == b"\r\n":
                    del data[dot:]
                    return data, dropped > 0 or bool(limit and len(data) > limit)
            if limit and dropped + len(data) > limit:
                dropped += len(data) - 2
                del data[:-2]


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _Smtp(self.handler, **self.SMTP_kwargs)

    def stop(self, *args: Any, **kwargs: Any) -> None:
        super().stop(*args, **kwargs)
        if isinstance(self.handler, Handler):
            self.handler.close()


def server(host: str, port: int, allow: Sequence[str]) -> Controller:
    handler = Handler(allow)
    return _Controller(
        handler,
        hostname=host,
        port=port,
        data_size_limit=data_size_limit(),
        server_hostname="panel-inbound",
        ready_timeout=10,
    )
