"""Run the FastAGI server (the Asterisk role points the dialplan at it)."""

from __future__ import annotations

import gc
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from telephony.fastagi import Server


class Command(BaseCommand):
    help = "Serve agi://HOST:PORT/authorize and /settle for Asterisk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--listen", default=settings.FASTAGI_LISTEN, help="HOST:PORT")
        parser.add_argument("--max-sessions", type=int, default=settings.FASTAGI_MAX_SESSIONS)
        parser.add_argument(
            "--db-connections",
            type=int,
            default=settings.FASTAGI_DB_CONNECTIONS,
            help="database connections the sessions' queries share",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, _, port = options["listen"].rpartition(":")
        server = Server(
            (host, int(port)),
            max_sessions=options["max_sessions"],
            db_connections=options["db_connections"],
        )
        server.warm()
        # Everything loaded so far (Django, the models, the rate tables) lives as long as
        # the process. Out of the collector's sight, a full collection no longer walks it
        # all: with it in sight one took 37 ms (measured), long enough to stall the calls
        # being set up meanwhile.
        gc.collect()
        gc.freeze()
        self.stdout.write(f"FastAGI listening on {host}:{port}")
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
