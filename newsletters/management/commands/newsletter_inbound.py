"""Run the endpoint that takes bounces, complaints and mailto unsubscribes (see inbound.py)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from newsletters import inbound


class Command(BaseCommand):
    help = "Receive mail for the bounce domain by SMTP and process it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--listen", default=settings.NEWSLETTER_INBOUND_LISTEN)
        parser.add_argument(
            "--allow", action="append", default=None, help="CIDR allowed to connect (repeat)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, _sep, port = options["listen"].rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--listen {options['listen']!r}: use HOST:PORT")
        allow = options["allow"] or settings.NEWSLETTER_INBOUND_ALLOW
        controller = inbound.server(host.strip("[]"), int(port), allow)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        controller.start()
        self.stdout.write(f"inbound SMTP on {host}:{port}, allowing {', '.join(allow)}")
        try:
            stop.wait()
        finally:
            controller.stop()
            self.stdout.write(f"stopped after {controller.handler.received} messages")
