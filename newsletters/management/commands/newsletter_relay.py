"""Run the deduplicating SMTP relay (newsletters.relay) until SIGTERM or SIGINT.

A management command, so that the mail node runs it from the panel's release and virtualenv
under the same service manager as the rest; it needs the settings only for STATE_DIR.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from newsletters.relay import DEFAULT_ALLOW, DedupRelay


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


class Command(BaseCommand):
    help = (
        "Run the SMTP relay that forwards each Message-ID once and answers 250 to repeats, "
        "until SIGTERM or SIGINT."
    )
    # The relay uses neither models nor the database; it should start even when they are down.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen", type=listen_address, default=("127.0.0.1", 2525), metavar="HOST:PORT"
        )
        parser.add_argument(
            "--store",
            type=Path,
            default=None,
            help="SQLite file of the accepted Message-IDs (default: STATE_DIR/relay/seen.sqlite3)",
        )
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

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["listen"]
        store = options["store"] or Path(settings.STATE_DIR) / "relay" / "seen.sqlite3"
        try:
            relay = DedupRelay(
                host=host,
                port=port,
                store=store,
                next_hop=options["next_hop"],
                allow=options["allow"] or DEFAULT_ALLOW,
                keep_days=options["keep_days"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        # aiosmtpd logs every SMTP command at INFO: thousands of lines a second at campaign
        # rates, drowning the relay's one line per message.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            try:
                relay.start()
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
            self.stdout.write(
                f"relay listening on {host}:{port}, next hop {relay.next_hop}, store {store}"
            )
            self.stdout.flush()
            stop.wait()
        finally:
            relay.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write(
            f"relay stopped: {relay.accepted} accepted, {relay.dropped} dropped as duplicates, "
            f"{relay.rejected} rejected, {relay.deferred} deferred"
        )
