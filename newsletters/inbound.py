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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.controller import Controller
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from newsletters import tokens

log = logging.getLogger(__name__)

# The replies. Only the database being away defers a message: anything else that arrives is
# taken (and kept, and dropped if unreadable) or refused for good, because a deferral makes
# the mail node offer the same bytes again for days, and they will not read better then.
REPLY_DONE = "250 2.0.0 Processed"
REPLY_TRY_LATER = "451 4.3.0 Try again later"


def _receive(raw: bytes, recipients: list[str]) -> list[str]:
    from newsletters.services import report_receive

    close_old_connections()
    try:
        return [report_receive(raw=raw, recipient=r) for r in recipients]
    finally:
        close_old_connections()


class Handler:
    def __init__(self, allow: Sequence[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allow]
        # Django's ORM is synchronous; a few threads keep their database connections.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="inbound")
        self.received = 0

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


def server(host: str, port: int, allow: Sequence[str]) -> Controller:
    handler = Handler(allow)
    return Controller(
        handler,
        hostname=host,
        port=port,
        data_size_limit=data_size_limit(),
        server_hostname="panel-inbound",
        ready_timeout=10,
    )
